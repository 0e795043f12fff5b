"""The two-flavour Schwinger model: every sampler against the reweighting reference, side by side.

The reference reweights independent exact pure-gauge configurations by ``det(D^dag D)``
(:func:`lattice_flows_schwinger.reweighting.reweighted_expectations`): no Markov chain, errors of
independent samples. Against it, with Gamma-method errors: HMC with pseudofermions (``schwinger``), HMC
with the exact determinant (``schwinger_det``), FTHMC through an untrained von Mises plaquette-Poisson flow
(``schwinger``) and flow independence Metropolis through one (``schwinger_det``: with pseudofermions an
independent proposal's noise, ~40 in delta_H on 4x4, leaves it almost never accepted). Each chain starts
from an exact pure-gauge configuration. Printed per lattice and mass: the reweighting ESS, then per
sampler the acceptance, the seconds, and plaquette, <Q^2> and Sigma = (1/V) Re tr D^{-1} with errors and the
number of combined standard errors from the reference; the pure-gauge values (the same samples unweighted)
show how far the fermions move each observable, and so how sharp the comparison is.

    python benchmarks/schwinger_reweighting.py                          # 4x4 and 6x6, m = 0.1 and 0.3, a few minutes
    python benchmarks/schwinger_reweighting.py --shapes 4 --masses 0.2 --samplers hmc fthmc --scale 4
    python benchmarks/schwinger_reweighting.py --reference-n 40000 --scale 10 --csv runs/schwinger.csv

Times are wall-clock on this machine (shared and noisy).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from lattice_flows import Simulation
from lattice_flows.analysis import format_value_error
from lattice_flows_schwinger.reweighting import chiral_condensate, reweighted_expectations
from lattice_flows_u1.exact_sampling import sample_exact

SAMPLERS = ("hmc", "hmc_det", "fthmc", "flow_imh")
OBSERVABLES = {"plaquette": "plaquette", "topological_charge^2": "<Q^2>", "chiral_condensate": "Sigma"}
FTHMC_FLOW = {"name": "u1_plaquette_poisson", "n_bins": 32, "von_mises_beta": 2.0, "latent_beta": 1.0}
IMH_FLOW = {"name": "u1_plaquette_poisson", "n_bins": 32, "von_mises_beta": 2.0, "latent_beta": 0.0}
#: Per sampler: action, sampler section, flow, chains, thermalization, trajectories (at --scale 1).
RUNS = {
    "hmc": ("schwinger", {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.25, "n_steps": 4}}, None, 64, 5, 40),
    "hmc_det": ("schwinger_det", {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.25, "n_steps": 4}}, None, 16, 5, 40),
    "fthmc": ("schwinger", {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}}, FTHMC_FLOW, 48, 5, 20),
    "flow_imh": ("schwinger_det", {"name": "flow_imh"}, IMH_FLOW, 64, 10, 80),
}


class CondensateSimulation(Simulation):
    """Also measures ``chiral_condensate`` (dense, exact) on every configuration."""

    def measure(self, x, generator=None):
        values = super().measure(x, generator)
        values["chiral_condensate"] = chiral_condensate(x, self.action.mass)
        return values


def spec_for(sampler: str, shape, beta: float, mass: float, args) -> dict:
    action, section, flow, chains, therm, traj = RUNS[sampler]
    spec = {
        "lattice": {"shape": list(shape)},
        "action": {"name": action, "beta": beta, "mass": mass},
        "sampler": section,
        "observables": ["plaquette", "topological_charge"],
        "n_chains": args.chains or chains,
        "n_thermalization": therm if args.thermalization is None else args.thermalization,
        "n_trajectories": args.trajectories or traj * args.scale,
        "seed": args.seed,
        "dtype": "float64",
    }
    if flow is not None:
        spec["flow"] = flow
    return spec


def run_sampler(sampler: str, shape, beta: float, mass: float, args):
    sim = CondensateSimulation.from_spec(spec_for(sampler, shape, beta, mass, args))
    start = sample_exact(beta, sim.settings.n_chains, tuple(shape), generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    t = time.perf_counter()
    table = sim.run(start, progress=False)
    seconds = time.perf_counter() - t
    return sim.summary(table), seconds


def _cell(mean: float, error: float, ref=None) -> str:
    text = format_value_error(mean, error)
    if ref is not None:
        combined = math.hypot(error, ref.error)
        pull = (mean - ref.mean) / combined if combined > 0 else math.nan
        text += f" {pull:+.1f}"
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=int, nargs="+", default=[4, 6], help="lattice sizes L (L x L)")
    p.add_argument("--masses", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--beta", type=float, default=2.0)
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--reference-n", type=int, default=4000, help="exact pure-gauge samples of the reference")
    p.add_argument("--scale", type=int, default=1, help="multiplies every sampler's measured trajectories")
    p.add_argument("--trajectories", type=int, default=0, help="measured trajectories of every sampler (0: its default x --scale)")
    p.add_argument("--thermalization", type=int, default=None, help="thermalization of every sampler (default: its own)")
    p.add_argument("--chains", type=int, default=0, help="chains of every sampler (0: its own default)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64; beta = {args.beta:g}")
    print("cells: value(error) and, for the samplers, (sampler - reference) / combined error")
    rows = []
    for L in args.shapes:
        shape = (L, L)
        for mass in args.masses:
            t = time.perf_counter()
            ref = reweighted_expectations(args.beta, mass, shape, args.reference_n, generator=torch.Generator().manual_seed(args.seed))
            seconds = time.perf_counter() - t
            print(
                f"\nbeta = {args.beta:g}, {L}x{L}, mass = {mass:g}: reweighting {ref.n} exact pure-gauge samples, "
                f"ESS {ref.ess:.0f} ({ref.ess_fraction:.3f} of n), std(log w) = {ref.log_weight_std:.3f}, {seconds:.1f} s"
            )
            if ref.warning:
                print(f"  warning: {ref.warning}")
            header = f"  {'':<12} {'acc':>5} {'tau_int':>7} {'s':>6}  " + "".join(f"{label:<22}" for label in OBSERVABLES.values())
            print(header)
            pure = "".join(f"{_cell(ref[n].unweighted_mean, ref[n].unweighted_error):<22}" for n in OBSERVABLES)
            print(f"  {'pure gauge':<12} {'':>5} {'':>7} {'':>6}  {pure}")
            refs = "".join(f"{_cell(ref[n].mean, ref[n].error):<22}" for n in OBSERVABLES)
            print(f"  {'reweighting':<12} {'':>5} {'':>7} {seconds:>6.1f}  {refs}")
            row = {"L": L, "mass": mass, "sampler": "reweighting", "seconds": seconds, "ess": ref.ess, "ess_fraction": ref.ess_fraction}
            for n in OBSERVABLES:
                row.update({n: ref[n].mean, f"{n} error": ref[n].error})
            rows.append(row)
            for sampler in args.samplers:
                s, seconds = run_sampler(sampler, shape, args.beta, mass, args)
                cells = "".join(f"{_cell(s.loc[n, 'mean'], s.loc[n, 'error'], ref[n]):<22}" for n in OBSERVABLES)
                flags = [n for n in OBSERVABLES if not s.loc[n, "reliable"]]
                tau = max(s.loc[n, "tau_int"] for n in OBSERVABLES)
                note = f"  unreliable: {', '.join(flags)}" if flags else ""
                print(f"  {sampler:<12} {s.loc['accepted', 'mean']:>5.2f} {tau:>7.2f} {seconds:>6.1f}  {cells}{note}", flush=True)
                row = {"L": L, "mass": mass, "sampler": sampler, "seconds": seconds, "acceptance": s.loc["accepted", "mean"],
                       "exp(-delta_H)": s.loc["exp(-delta_H)", "mean"]}
                for n in OBSERVABLES:
                    combined = math.hypot(s.loc[n, "error"], ref[n].error)
                    row.update({n: s.loc[n, "mean"], f"{n} error": s.loc[n, "error"], f"{n} tau_int": s.loc[n, "tau_int"],
                                f"{n} pull": (s.loc[n, "mean"] - ref[n].mean) / combined, f"{n} reliable": bool(s.loc[n, "reliable"])})
                rows.append(row)
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv}")
    return rows


if __name__ == "__main__":
    main()

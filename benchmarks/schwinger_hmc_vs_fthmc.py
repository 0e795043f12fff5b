"""HMC against FTHMC on the two-flavour Schwinger model (pseudofermions, CG), side by side in one run.

The samplers: ``hmc`` on ``schwinger`` (``benchmarks/specs/schwinger_b6_16x16_hmc.toml``), and ``fthmc`` on
``schwinger`` through the ``u1_plaquette_poisson`` flow (``..._fthmc_poisson.toml``), untrained (the von Mises
start at the spec's beta) and trained on the pure gauge action ``u1_wilson`` at the same beta (``--flow``: a
checkpoint of ``lattice-flows train benchmarks/specs/u1_b6_8x8_poisson.toml``; without it the script trains
one for ``--train-seconds`` on 8x8 with that spec). FTHMC is exact for any flow, so a flow trained on the
pure gauge theory is a legitimate (if not the best) choice; training on the full target is not done here.

The start, the same for every sampler: ``--chains`` exact pure-gauge configurations at the same beta
(``sample_exact``), then ``--equilibrate`` HMC trajectories on ``schwinger`` (step tuned to the target
acceptance), which brings in the fermion determinant. Each sampler then tunes its own step during its
``--thermalization`` trajectories (``target_acceptance``, at the spec's trajectory length or the one given)
and measures ``--trajectories`` with the step fixed.

Printed per sampler, with Gamma-method errors: acceptance, <exp(-dH)> (marked * with the summary's note
when a heavy tail of dH biases it low: the mirror events that hold part of its mean are too rare to have
been seen), the truncated identity delta_H_identity(K=2) (exactly 1 for an exact sampler however heavy the
tail: the check to read), tau_int(Q) and whether its window closed (if not,
or if Q never changed, it is a LOWER BOUND and so is every cost built on it: marked ">="), CG iterations and
solves per trajectory (per chain), seconds per trajectory (the measured phase's wall time divided by
trajectories x chains; chains advance as one batch), the same in CPU seconds of this process (less
sensitive to other jobs on a shared machine; the ratios to HMC use these), seconds per independent Q
(2 tau_int(Q) x seconds per trajectory), <cos x_P> and <Q^2> and their difference from HMC's in standard errors.

The exact answer (``--reference-n``, default 4096; 0 skips it): independent exact pure-gauge configurations
(their own seed, not the start's) reweighted by ``det(D^dag D)`` (``lattice_flows_schwinger.reweighting``),
with the reweighting ESS; every sampler's <cos x_P> and <Q^2> are printed in standard errors from it. At
beta = 6 on 16x16, m = 0.1 the reweighting keeps 0.81 of 4096 samples (0.08 CPU s per configuration, one thread).
A sampler whose Q is frozen keeps the start's (pure-gauge) distribution of Q, and at beta = 6 the plaquette
couples to Q, so its <cos x_P> can sit several of its own (too small) errors from the exact value.

    python benchmarks/schwinger_hmc_vs_fthmc.py                       # defaults: a few minutes, beta = 6, 16x16
    python benchmarks/schwinger_hmc_vs_fthmc.py --beta 4 --flow runs/b4_poisson/flow.pt
    python benchmarks/schwinger_hmc_vs_fthmc.py --chains 8 --thermalization 100 --trajectories 1000 --flow runs/b6_poisson/flow.pt

Times are wall clock of one process with ``--threads`` (default 1) on this machine, which may be shared:
read the ratios, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from lattice_flows import Simulation
from lattice_flows.chain_driver import drive_chains
from lattice_flows.analysis import IDENTITY_ROW
from lattice_flows.compare import timed_run
from lattice_flows.specfile import load_spec
from lattice_flows_schwinger import reweighting
from lattice_flows_u1.exact_sampling import sample_exact

SPECS = Path(__file__).resolve().parent / "specs"
HMC_SPEC = SPECS / "schwinger_b6_16x16_hmc.toml"
FTHMC_SPEC = SPECS / "schwinger_b6_16x16_fthmc_poisson.toml"
PURE_GAUGE_FLOW_SPEC = SPECS / "u1_b6_8x8_poisson.toml"
SAMPLERS = ("hmc", "fthmc_untrained", "fthmc_trained")


def set_flow_betas(flow: dict, args) -> None:
    """The Poisson flow's von Mises start at ``--beta`` and, if given, its ``--latent-beta`` (in place)."""
    flow["von_mises_beta"] = args.beta
    if args.latent_beta > 0:
        flow["latent_beta"] = args.latent_beta


def with_settings(spec: dict, args, *, length: float, steps: int) -> dict:
    spec = copy.deepcopy(spec)
    spec["lattice"] = {"shape": [args.shape, args.shape]}
    spec["action"].update(beta=args.beta, mass=args.mass)
    if args.even_odd:
        spec["action"]["even_odd"] = True
    if "flow" in spec:
        set_flow_betas(spec["flow"], args)
    integrator = spec["sampler"]["integrator"]
    if length > 0:
        integrator.update(step_size=length / steps, n_steps=steps)
    spec["sampler"]["target_acceptance"] = args.target_acceptance
    spec.update(n_chains=args.chains, n_thermalization=args.thermalization, n_trajectories=args.trajectories,
                seed=args.seed, dtype=args.dtype, device=args.device)
    return spec


def train_pure_gauge_flow(args, out: Path) -> str:
    """The Poisson flow trained ``--train-seconds`` on 8x8 ``u1_wilson`` at ``--beta`` (the spec of the U(1) runs)."""
    spec = load_spec(PURE_GAUGE_FLOW_SPEC)
    spec["action"]["beta"] = args.beta
    set_flow_betas(spec["flow"], args)
    spec["training"]["max_seconds"] = args.train_seconds
    spec.update(dtype=args.dtype, device=args.device, seed=args.seed)
    sim = Simulation.from_spec(spec)
    sim.train(progress=False)
    path = out / f"flow_u1_b{args.beta:g}.pt"
    sim.save(path)
    return str(path)


def equilibrated_start(hmc_spec: dict, args) -> tuple[torch.Tensor, float, str]:
    """Exact pure-gauge fields at ``beta``, then ``--equilibrate`` tuned HMC trajectories on ``schwinger``."""
    g = torch.Generator().manual_seed(args.seed + 7)
    x = sample_exact(args.beta, args.chains, (args.shape, args.shape), generator=g,
                     dtype=getattr(torch, args.dtype)).to(args.device)
    if args.equilibrate == 0:
        return x, 0.0, "exact pure-gauge configurations, no fermion thermalization"
    sim = Simulation.from_spec({**hmc_spec, "seed": args.seed + 11, "n_thermalization": args.equilibrate})
    t0 = time.perf_counter()
    run = drive_chains(sim.sampler, sim.action, sim.sampler.init(x, sim.action), sim.generator(),
                       n_thermalization=args.equilibrate, n_trajectories=0, measure=sim.measure)
    seconds = time.perf_counter() - t0
    return run.state.x, seconds, f"exact pure-gauge configurations, then {args.equilibrate} tuned HMC trajectories on schwinger"


def run_sampler(sim: Simulation, start: torch.Tensor) -> tuple:
    """The table, its summary, the wall and the CPU seconds (this process) of the measured trajectories alone
    (after tuning), and the wall seconds of the whole run (:func:`lattice_flows.compare.timed_run`)."""
    measured = timed_run(sim, start)
    return measured.table, measured.summary, measured.wall, measured.cpu, measured.total


def row(name: str, sim: Simulation, table, summary, seconds: float, cpu: float, total: float) -> dict:
    s = sim.settings
    per_traj = seconds / (s.n_trajectories * s.n_chains)
    cpu_per_traj = cpu / (s.n_trajectories * s.n_chains)
    q = "topological_charge"
    frozen = bool(table.groupby("chain")[q].nunique().max() <= 1)
    tau, dtau = float(summary.loc[q, "tau_int"]), float(summary.loc[q, "tau_int_error"])
    closed = bool(summary.loc[q, "reliable"]) and not frozen
    note = str(summary.loc[q, "note"])
    if frozen:  # Q never changed: no autocorrelation time measurable; the run length is all one can say
        tau, dtau, note = float(s.n_trajectories), math.nan, f"Q never changed in any chain in {s.n_trajectories} trajectories"
    sampler = table.attrs.get("sampler", {})
    return {
        "sampler": name,
        "acc": float(summary.loc["accepted", "mean"]),
        "exp(-dH)": float(summary.loc["exp(-delta_H)", "mean"]),
        "exp(-dH) err": float(summary.loc["exp(-delta_H)", "error"]),
        "exp(-dH) reliable": bool(summary.loc["exp(-delta_H)", "reliable"]),
        "exp(-dH) note": str(summary.loc["exp(-delta_H)", "note"]),
        "identity": float(summary.loc[IDENTITY_ROW, "mean"]), "identity err": float(summary.loc[IDENTITY_ROW, "error"]),
        "tau_Q": tau, "tau_Q err": dtau, "closed": closed, "note": note,
        "cg it/traj": float(table["action.cg_iterations"].mean()),
        "s/traj": per_traj,
        "s/indep Q": 2 * tau * per_traj,
        "cpu s/traj": cpu_per_traj,
        "cpu s/indep Q": 2 * tau * cpu_per_traj,
        "plaq": float(summary.loc["plaquette", "mean"]), "plaq err": float(summary.loc["plaquette", "error"]),
        "tau_plaq": float(summary.loc["plaquette", "tau_int"]),
        "Q2": float(summary.loc[f"{q}^2", "mean"]), "Q2 err": float(summary.loc[f"{q}^2", "error"]),
        "Q2 reliable": bool(summary.loc[f"{q}^2", "reliable"]) and not frozen,
        "step": sampler.get("integrator", {}).get("step_size"), "n_steps": sampler.get("integrator", {}).get("n_steps"),
        "seconds": total,
    }


def pull(a: float, ea: float, b: float, eb: float) -> float:
    err = math.hypot(ea, eb)
    return (a - b) / err if err > 0 else math.nan


def exact_reference(args):
    """Plaquette and <Q^2> by reweighting ``--reference-n`` independent exact pure-gauge configurations."""
    observables = {"plaquette": reweighting.plaquette, "topological_charge^2": reweighting.topological_charge_squared}
    return reweighting.reweighted_expectations(
        args.beta, args.mass, (args.shape, args.shape), args.reference_n, observables=observables,
        generator=torch.Generator().manual_seed(args.seed + 1_000_003), batch=16)


def print_table(rows: list[dict], args, start_note: str, reference=None) -> None:
    hmc_n = f" (HMC {args.hmc_trajectories})" if args.hmc_trajectories else ""
    print(f"\n# two-flavour Schwinger model, beta = {args.beta}, mass = {args.mass}, {args.shape}x{args.shape}, "
          f"{args.dtype}, {args.chains} chains x {args.trajectories}{hmc_n} measured trajectories (after {args.thermalization} tuning)"
          f"{', even-odd pseudofermions' if args.even_odd else ''}"
          f"{f', flow latent_beta {args.latent_beta:g}' if args.latent_beta > 0 else ''}")
    print(f"# start (all samplers): {start_note}")
    print(f"{'sampler':>16} {'step x n':>11} {'acc':>5} {'<exp(-dH)>':>14} {'identity(K=2)':>13} {'tau_int(Q)':>15} {'CG it/traj':>10} "
          f"{'s/traj':>9} {'s/indep Q':>11} {'CPU s/traj':>10} {'CPU s/ind Q':>11} {'<cos x_P>':>20} {'<Q^2>':>14}")
    for r in rows:
        bound = "" if r["closed"] else ">="
        tau = f"{bound}{r['tau_Q']:.1f}" + (f"±{r['tau_Q err']:.1f}" if math.isfinite(r["tau_Q err"]) else "")
        print(f"{r['sampler']:>16} {r['step']:>6.4f}x{r['n_steps']:<4d} {r['acc']:>5.3f} {r['exp(-dH)']:>6.3f}±{r['exp(-dH) err']:<6.3f}{' ' if r['exp(-dH) reliable'] else '*'} "
              f"{r['identity']:>6.3f}±{r['identity err']:<6.3f} "
              f"{tau:>15} {r['cg it/traj']:>10.0f} {r['s/traj']:>9.2e} "
              f"{bound + format(r['s/indep Q'], '.2e'):>11} {r['cpu s/traj']:>10.2e} {bound + format(r['cpu s/indep Q'], '.2e'):>11} {r['plaq']:>10.5f}±{r['plaq err']:<9.5f} "
              f"{r['Q2']:>6.3f}±{r['Q2 err']:<6.3f}{'' if r['Q2 reliable'] else '*'}")
    for r in rows:
        if not r["closed"]:
            print(f"#   {r['sampler']}: tau_int(Q) is a LOWER BOUND (window not closed: {r['note']}); so is its s/indep Q")
        if not r["exp(-dH) reliable"]:
            print(f"#   {r['sampler']}: * <exp(-dH)> unreliable ({r['exp(-dH) note']}); "
                  f"the identity column is the check of exactness to read")
        if not r["Q2 reliable"]:
            print(f"#   {r['sampler']}: * <Q^2> error unreliable (its own tau_int window did not close, or Q frozen)")
    if reference is not None:
        plaq, q2 = reference["plaquette"], reference["topological_charge^2"]
        print(f"# exact (reweighting, ESS {reference.ess:.0f} of {reference.n}): <cos x_P> {plaq.mean:.5f}±{plaq.error:.5f}, "
              f"<Q^2> {q2.mean:.3f}±{q2.error:.3f}" + (f"; WARNING {reference.warning}" if reference.warning else ""))
        for r in rows:
            caveat = "" if r["Q2 reliable"] else " (its errors unreliable: Q frozen or its window not closed)"
            print(f"#   {r['sampler']} - exact: <cos x_P> {pull(r['plaq'], r['plaq err'], plaq.mean, plaq.error):+.2f} sigma, "
                  f"<Q^2> {pull(r['Q2'], r['Q2 err'], q2.mean, q2.error):+.2f} sigma{caveat}")
    hmc = next((r for r in rows if r["sampler"] == "hmc"), None)
    if hmc is None:
        return
    for r in rows:
        if r is hmc:
            continue
        ratio = r["cpu s/indep Q"] / hmc["cpu s/indep Q"]
        if r["closed"] and hmc["closed"]:
            what = f"{ratio:.3g}"
        elif hmc["closed"]:
            what = f">= {ratio:.3g} (its tau_int a lower bound)"
        elif r["closed"]:
            what = f"<= {ratio:.3g} (HMC's tau_int a lower bound: HMC dearer than shown)"
        else:
            what = f"{ratio:.3g}, both tau_int lower bounds: no conclusion"
        print(f"#   {r['sampler']}: cost (CPU seconds) per independent Q / HMC's = {what} (wall seconds: "
              f"{r['s/indep Q'] / hmc['s/indep Q']:.3g}); CG iterations per trajectory / HMC's = "
              f"{r['cg it/traj'] / hmc['cg it/traj']:.2f}; CPU seconds per trajectory / HMC's = {r['cpu s/traj'] / hmc['cpu s/traj']:.2f}")
        print(f"#   {r['sampler']} - hmc: <cos x_P> {pull(r['plaq'], r['plaq err'], hmc['plaq'], hmc['plaq err']):+.2f} sigma, "
              f"<Q^2> {pull(r['Q2'], r['Q2 err'], hmc['Q2'], hmc['Q2 err']):+.2f} sigma")


def main() -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--mass", type=float, default=0.1)
    p.add_argument("--shape", type=int, default=16, help="square lattice size L")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--equilibrate", type=int, default=10, help="HMC trajectories on schwinger before the common start")
    p.add_argument("--thermalization", type=int, default=20, help="tuning trajectories per sampler (not measured)")
    p.add_argument("--trajectories", type=int, default=30, help="measured trajectories per chain and sampler")
    p.add_argument("--hmc-trajectories", type=int, default=0,
                   help="measured trajectories per chain for HMC (0: --trajectories); HMC is cheaper per trajectory "
                        "and needs a longer run for a useful bound on its tau_int(Q)")
    p.add_argument("--reference-n", type=int, default=4096,
                   help="exact pure-gauge configurations reweighted for the exact answer (0: none)")
    p.add_argument("--hmc-length", type=float, default=0.0, help="HMC trajectory length (0: the spec's, 1.0)")
    p.add_argument("--hmc-steps", type=int, default=10)
    p.add_argument("--fthmc-length", type=float, default=0.0, help="FTHMC trajectory length (0: the spec's, 0.26)")
    p.add_argument("--fthmc-steps", type=int, default=8)
    p.add_argument("--target-acceptance", type=float, default=0.8)
    p.add_argument("--latent-beta", type=float, default=0.0,
                   help="the Poisson flow's latent_beta (0: the spec's, 2.0): the latent plaquettes' coupling; closer "
                   "to --beta stretches the field less (a larger FTHMC step) but frees Q less")
    p.add_argument("--even-odd", action="store_true",
                   help="even-odd preconditioned pseudofermions for every sampler (about 1.9x cheaper trajectories)")
    p.add_argument("--flow", default="", help="checkpoint of the Poisson flow trained on u1_wilson at --beta")
    p.add_argument("--train-seconds", type=float, default=30.0, help="without --flow: train one this long on 8x8")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/schwinger_hmc_vs_fthmc", help="folder for the tables, specs and a trained flow")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# torch {torch.__version__}, {args.device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} thread(s) of {os.cpu_count()} cores, machine possibly shared with other jobs")

    hmc_spec = with_settings(load_spec(HMC_SPEC), args, length=args.hmc_length, steps=args.hmc_steps)
    fthmc_spec = with_settings(load_spec(FTHMC_SPEC), args, length=args.fthmc_length, steps=args.fthmc_steps)
    flow = ""
    if "fthmc_trained" in args.samplers:
        if args.flow:
            flow = args.flow
        else:
            t0 = time.perf_counter()
            flow = train_pure_gauge_flow(args, out)
            print(f"# trained the Poisson flow on 8x8 u1_wilson at beta = {args.beta} for {time.perf_counter() - t0:.0f} s: {flow}")
    start, eq_seconds, start_note = equilibrated_start(hmc_spec, args)
    print(f"# common start: {start_note} ({eq_seconds:.0f} s)", flush=True)

    reference = None
    if args.reference_n:
        t0 = time.process_time()
        reference = exact_reference(args)
        print(f"# exact reference ({time.process_time() - t0:.0f} CPU s): {reference}", flush=True)

    rows = []
    for name in args.samplers:
        if name == "hmc":
            sim = Simulation.from_spec(hmc_spec if not args.hmc_trajectories
                                       else {**hmc_spec, "n_trajectories": args.hmc_trajectories})
        elif name == "fthmc_untrained":
            sim = Simulation.from_spec(fthmc_spec)
        else:
            sim = Simulation.load(flow, **{k: v for k, v in fthmc_spec.items() if k not in ("flow", "training")})
            history = sim.history
            trained = f"{len(history)} steps, {float(history['seconds'].iloc[-1]):.0f} s" if history is not None and len(history) else "untrained"
            print(f"# fthmc_trained: flow {flow} (trained on u1_wilson, {trained})")
        if name != "hmc":
            quality = sim.flow_quality(64, torch.Generator(device=sim.device).manual_seed(1))
            print(f"# {name}: flow ESS against the full Schwinger target {quality['ess']:.4f}, loss {quality['loss']:.2f}", flush=True)
        table, summary, seconds, cpu, total = run_sampler(sim, start)
        table.to_csv(out / f"table_{name}.csv.gz", index=False)
        spec = sim.to_spec()
        spec["sampler"] = table.attrs.get("sampler", spec["sampler"])
        (out / f"spec_{name}.json").write_text(json.dumps(spec, indent=2))
        r = row(name, sim, table, summary, seconds, cpu, total)
        (out / f"row_{name}.json").write_text(json.dumps(r, indent=2))  # kept if a later sampler fails
        rows.append(r)
        print(f"# {name}: {total:.0f} s, tuned {json.dumps(table.attrs.get('sampler', {}).get('integrator', {}))}", flush=True)
    print_table(rows, args, start_note, reference)
    return rows


if __name__ == "__main__":
    main()

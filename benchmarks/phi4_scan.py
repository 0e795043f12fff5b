"""Symmetry-breaking transition of 2D phi^4 (hopping form) with HMC: |M|, chi and the connected chi against kappa.

    # 8x8, lam = 0.02, kappa from 0.22 to 0.30: the table and the peak of the connected susceptibility
    python benchmarks/phi4_scan.py --lam 0.02 --kappas 0.22 0.30 --n 9 --threads 1

Per kappa: HMC (leapfrog, 10 steps, the step size tuned to 85% acceptance while thermalizing), hot
start, ``--chains`` chains of ``--trajectories`` measured trajectories. Columns:

- ``<|M|>`` and ``chi = V <M^2>`` with Gamma-method errors (autocorrelations within chains);
- ``chi_c = V (<M^2> - <|M|>^2)``, the connected susceptibility, which peaks at the (pseudo)critical
  kappa on a finite lattice (``chi`` itself keeps growing into the broken phase, where it is ``V <M>^2``);
- the Binder cumulant ``U = 1 - <M^4> / (3 <M^2>^2)`` (0 for a Gaussian M, 2/3 deep in the broken phase);
- ``tau(M^2)``, the integrated autocorrelation time of ``M^2`` in trajectories.

Errors of ``chi_c`` and ``U`` (functions of several means) come from a jackknife over blocks of
``--block`` trajectories of every chain, which must be longer than the autocorrelation time.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from lattice_flows import Simulation
from lattice_flows.analysis import gamma_method


def spec_for(kappa: float, args) -> dict:
    return {
        "lattice": {"shape": list(args.shape)},
        "action": {"name": "phi4", "kappa": kappa, "lam": args.lam},
        "sampler": {
            "name": "hmc",
            "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 10},
            "target_acceptance": 0.85,
        },
        "observables": ["magnetization"],
        "n_chains": args.chains,
        "n_thermalization": args.thermalization,
        "n_trajectories": args.trajectories,
        "seed": args.seed,
    }


def jackknife(blocks: np.ndarray, f) -> tuple[float, float]:
    """``f`` of the block means and its jackknife error; ``blocks`` is ``(n_blocks, n_quantities)`` of block means."""
    n = blocks.shape[0]
    total = blocks.sum(0)
    leave_one_out = np.array([f((total - b) / (n - 1)) for b in blocks])
    value = f(total / n)
    return value, math.sqrt((n - 1) * np.mean((leave_one_out - leave_one_out.mean()) ** 2))


def measure(kappa: float, args) -> dict:
    sim = Simulation.from_spec(spec_for(kappa, args))
    table = sim.run(progress=False)
    V = math.prod(args.shape)
    m = table["magnetization"].to_numpy().reshape(args.chains, args.trajectories)  # chain-major rows
    abs_m = gamma_method(np.abs(m))
    chi = gamma_method(V * m**2)
    tau = chi.tau_int
    n_blocks = args.trajectories // args.block
    per_block = m[:, : n_blocks * args.block].reshape(args.chains * n_blocks, args.block)
    moments = np.stack([np.abs(per_block).mean(1), (per_block**2).mean(1), (per_block**4).mean(1)], axis=1)
    chi_c = jackknife(moments, lambda q: V * (q[1] - q[0] ** 2))
    binder = jackknife(moments, lambda q: 1 - q[2] / (3 * q[1] ** 2))
    return {
        "kappa": kappa,
        "abs_m": (abs_m.mean, abs_m.error),
        "chi": (chi.mean, chi.error),
        "chi_c": chi_c,
        "binder": binder,
        "tau": tau,
        "acceptance": float(table["accepted"].mean()),
        "step_size": table.attrs["sampler"]["integrator"]["step_size"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lam", type=float, default=0.02, help="quartic coupling lambda (hopping form)")
    parser.add_argument("--shape", type=int, nargs="+", default=[8, 8])
    parser.add_argument("--kappas", type=float, nargs=2, default=[0.22, 0.30], help="first and last kappa")
    parser.add_argument("--n", type=int, default=9, help="number of kappas, evenly spaced")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--thermalization", type=int, default=500)
    parser.add_argument("--trajectories", type=int, default=4000)
    parser.add_argument("--block", type=int, default=200, help="trajectories per jackknife block")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kappas = np.linspace(*args.kappas, args.n)
    print(f"# phi4, lam = {args.lam}, lattice {args.shape}, {args.chains} chains x {args.trajectories} trajectories, HMC")
    print(f"{'kappa':>8} {'<|M|>':>17} {'chi = V<M^2>':>19} {'chi_c':>17} {'Binder U':>17} {'tau(M^2)':>9} {'acc':>5} {'eps':>6}")
    rows = []
    for kappa in kappas:
        r = measure(float(kappa), args)
        rows.append(r)
        print(
            f"{r['kappa']:>8.4f} {r['abs_m'][0]:>8.4f} ± {r['abs_m'][1]:<6.4f} {r['chi'][0]:>9.3f} ± {r['chi'][1]:<7.3f} "
            f"{r['chi_c'][0]:>8.3f} ± {r['chi_c'][1]:<6.3f} {r['binder'][0]:>8.4f} ± {r['binder'][1]:<6.4f} "
            f"{r['tau']:>9.1f} {r['acceptance']:>5.2f} {r['step_size']:>6.3f}",
            flush=True,
        )
    peak = max(rows, key=lambda r: r["chi_c"][0])
    print(f"# peak of chi_c on the grid: kappa = {peak['kappa']:.4f}, chi_c = {peak['chi_c'][0]:.3f} ± {peak['chi_c'][1]:.3f}")


if __name__ == "__main__":
    main()

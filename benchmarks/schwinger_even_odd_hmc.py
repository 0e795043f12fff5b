"""HMC on the two-flavour Schwinger model with and without even-odd preconditioning, side by side.

Both runs sample the same target (``schwinger`` with ``even_odd = false`` and ``true``: ``det D = (m + 2)^(V/2)
det D_hat``) with the same leapfrog (``--step-size`` x ``--n-steps``, fixed, no tuning) from the same start:
``--chains`` exact pure-gauge configurations at ``--beta`` followed by ``--equilibrate`` plain HMC
trajectories. Each of ``--repeats`` rounds runs ``--trajectories`` trajectories of each variant in turn
(alternating, so a noisy neighbour hurts both alike); printed per variant: the median over the rounds of the
CPU seconds per trajectory and chain (this process, one thread), the CG iterations per trajectory and chain
(not comparable between the two: ``D_hat^dag D_hat`` on half the sites is a cheaper operator), the
acceptance, ``<exp(-delta_H)>`` and the plaquette, and the ratio of the plain to the even-odd cost.

    python benchmarks/schwinger_even_odd_hmc.py                             # 16x16, beta 6, m 0.1: a few minutes
    python benchmarks/schwinger_even_odd_hmc.py --shape 32 --beta 4 --step-size 0.07 --n-steps 14

Times are CPU time of one process on a machine that may be shared: read the ratio, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import pandas as pd
import torch

from lattice_flows import Simulation
from lattice_flows.chain_driver import drive_chains
from lattice_flows_u1.exact_sampling import sample_exact

VARIANTS = {"plain": False, "even_odd": True}


def spec_for(args, even_odd: bool, n_trajectories: int, seed: int) -> dict:
    return {
        "lattice": {"shape": [args.shape, args.shape]},
        "action": {"name": "schwinger", "beta": args.beta, "mass": args.mass, "even_odd": even_odd},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": args.step_size, "n_steps": args.n_steps}},
        "observables": ["plaquette"],
        "n_chains": args.chains, "n_thermalization": 0, "n_trajectories": n_trajectories,
        "seed": seed, "dtype": args.dtype, "device": args.device,
    }


def run(spec: dict, x: torch.Tensor):
    """The table of ``spec`` from the fields ``x`` and the CPU seconds it took."""
    sim = Simulation.from_spec(spec)
    t0 = time.process_time()
    table = sim.run(initial=x, progress=False)
    return table, time.process_time() - t0


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, default=16, help="square lattice size L (even)")
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--mass", type=float, default=0.1)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--equilibrate", type=int, default=10, help="plain HMC trajectories from the exact pure-gauge start")
    p.add_argument("--trajectories", type=int, default=10, help="trajectories per variant and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds (the median is shown)")
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} thread(s) of {os.cpu_count()} cores, machine possibly shared with other jobs")
    x = sample_exact(args.beta, args.chains, (args.shape, args.shape), generator=torch.Generator().manual_seed(args.seed + 7),
                     dtype=getattr(torch, args.dtype)).to(args.device)
    if args.equilibrate:
        sim = Simulation.from_spec(spec_for(args, False, args.equilibrate, args.seed + 11))
        x = drive_chains(sim.sampler, sim.action, sim.sampler.init(x, sim.action), sim.generator(),
                         n_thermalization=args.equilibrate, n_trajectories=0, measure=sim.measure).state.x
    cpu = {name: [] for name in VARIANTS}
    tables = {name: [] for name in VARIANTS}
    for r in range(args.repeats):
        for name, even_odd in VARIANTS.items():
            table, seconds = run(spec_for(args, even_odd, args.trajectories, args.seed + 100 + r), x)
            cpu[name].append(seconds / (args.trajectories * args.chains))
            tables[name].append(table)
    print(f"\n# schwinger HMC, beta = {args.beta}, mass = {args.mass}, {args.shape}x{args.shape}, {args.dtype}, "
          f"{args.chains} chains, leapfrog {args.step_size} x {args.n_steps}, {args.repeats} rounds x {args.trajectories} trajectories")
    print(f"{'variant':>9} {'CPU s/traj':>11} {'CG it/traj':>10} {'acc':>6} {'<exp(-dH)>':>11} {'<cos x_P>':>9}")
    out = {}
    for name in VARIANTS:
        t = pd.concat(tables[name])
        out[name] = {
            "cpu s/traj": statistics.median(cpu[name]), "cg it/traj": float(t["action.cg_iterations"].mean()),
            "acc": float(t["accepted"].mean()), "exp(-dH)": float(sum(math.exp(-d) for d in t["delta_H"]) / len(t)),
            "plaq": float(t["plaquette"].mean()),
        }
        o = out[name]
        print(f"{name:>9} {o['cpu s/traj']:>11.3e} {o['cg it/traj']:>10.0f} {o['acc']:>6.3f} {o['exp(-dH)']:>11.3f} {o['plaq']:>9.5f}")
    ratio = out["plain"]["cpu s/traj"] / out["even_odd"]["cpu s/traj"]
    spread = [a / b for a, b in zip(cpu["plain"], cpu["even_odd"])]
    print(f"# plain / even_odd CPU seconds per trajectory: {ratio:.2f} (per round {', '.join(f'{s:.2f}' for s in spread)}); "
          "same target, same integrator; the acceptances differ (different pseudofermion noise), so compare them too")
    out["ratio"] = ratio
    return out


if __name__ == "__main__":
    main()

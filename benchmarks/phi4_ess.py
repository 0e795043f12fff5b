"""ESS of a trained phi^4 flow on fresh samples, several independent estimates, and an independence
Metropolis check against HMC.

    python benchmarks/phi4_ess.py phi4.pt --n-eval 4096 --repeats 5 --threads 1

Each estimate draws ``--n-eval`` new configurations from the flow with its own seed (none of them used in
training) and prints ``ESS = (sum w)^2 / (N sum w^2)``, ``w = exp(-S) / q``; then the ESS of all of them
together, which is the first to show a heavy tail of rare large weights (a poor flow can look fine on a
few thousand samples). With ``--imh N`` it then runs
``flow_imh`` (chains started from flow samples: a hot start from the prior has a larger weight than any
flow sample and would hold the chains) and HMC for ``N`` updates of 64 chains each and compares ``<|M|>``,
``<phi^2>`` and ``chi``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lattice_flows import Simulation
from lattice_flows.training import effective_sample_size

OBSERVABLES = ["abs_magnetization", "phi_squared", "susceptibility"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--n-eval", type=int, default=4096, help="samples per ESS estimate")
    parser.add_argument("--repeats", type=int, default=5, help="independent ESS estimates")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first estimate (then +1, +2, ...)")
    parser.add_argument("--imh", type=int, default=0, help="flow_imh and HMC updates per chain for the comparison (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sim = Simulation.load(args.checkpoint)
    history = sim.history
    trained = "untrained"
    if history is not None and len(history):
        trained = f"{len(history)} steps, {float(history['seconds'].iloc[-1]):.0f} s"
    spec = sim.to_spec()
    print(f"# {args.checkpoint}: {spec['action']} on {list(sim.lattice_shape)}, flow {spec['flow']}, {trained}")
    values, log_ws = [], []
    for k in range(args.repeats):
        x, log_q = sim.sample_flow(args.n_eval, torch.Generator(device=sim.device).manual_seed(args.seed + k))
        log_w = (-sim.action(x) - log_q).double()
        log_ws.append(log_w)
        values.append(float(effective_sample_size(log_w)))
        print(f"ESS (seed {args.seed + k}, {args.n_eval} samples) = {values[-1]:.3f}   loss {float(-log_w.mean()):.4f}", flush=True)
    if len(values) > 1:
        pooled = float(effective_sample_size(torch.cat(log_ws)))
        print(
            f"# ESS mean {statistics.mean(values):.3f}, spread (std) {statistics.stdev(values):.3f} over {len(values)} "
            f"estimates; all {len(values) * args.n_eval} samples together: {pooled:.3f} (rare large weights show here first)"
        )
    if args.imh:
        settings = dict(observables=OBSERVABLES, n_chains=64, n_thermalization=100, n_trajectories=args.imh, seed=args.seed)
        imh = Simulation.load(args.checkpoint, sampler="flow_imh", **settings)
        initial, _ = imh.sample_flow(64, torch.Generator(device=imh.device).manual_seed(args.seed - 1))
        a = imh.summary(imh.run(initial, progress=False))
        hmc_sampler = {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 7}}
        spec = {**sim.to_spec(), "sampler": hmc_sampler, "dtype": "float64", **settings}
        del spec["flow"], spec["training"]
        hmc = Simulation.from_spec(spec)
        b = hmc.summary(hmc.run(progress=False))
        check = a.loc["exp(-delta_H)"]
        print(f"# flow_imh acceptance {a.loc['accepted', 'mean']:.3f}; <exp(-delta_H)> = {check['mean']:.4f} ± {check['error']:.4f}")
        print(f"{'':>18} {'flow_imh':>20} {'tau':>6} {'HMC':>20} {'tau':>6} {'pull':>6}")
        for q in OBSERVABLES:
            pull = (a.loc[q, "mean"] - b.loc[q, "mean"]) / (a.loc[q, "error"] ** 2 + b.loc[q, "error"] ** 2) ** 0.5
            print(
                f"{q:>18} {a.loc[q, 'mean']:>10.4f} ± {a.loc[q, 'error']:<7.4f} {a.loc[q, 'tau_int']:>6.1f} "
                f"{b.loc[q, 'mean']:>10.4f} ± {b.loc[q, 'error']:<7.4f} {b.loc[q, 'tau_int']:>6.1f} {pull:>6.2f}"
            )


if __name__ == "__main__":
    main()

"""Does a penalty on the latent force (training.force_penalty) let FTHMC take larger steps?

From one trained flow, each penalty value continues the training for the same time, then FTHMC's
step size is tuned toward an acceptance of 0.8 on the flow's lattice. Printed per penalty: the
reverse-KL loss and ESS on fresh samples, the mean squared latent force ``<|dS_f/dz|^2>/n_dof`` on
them, and the tuned step size with the acceptance it reached. A penalty of 0 is the control (the
same extra training without it).

    python benchmarks/force_penalty.py runs/b6_stout.pt --minutes 3 --penalties 0 0.1 1
"""

from __future__ import annotations

import argparse

import torch

from lattice_flows import Simulation
from lattice_flows.training import draw_prior, latent_force_penalty


def tuned_step(sim: Simulation, args) -> tuple[float, float]:
    sampler = {
        "name": "fthmc", "target_acceptance": 0.8,
        "integrator": {"name": "leapfrog", "step_size": args.length / args.steps, "n_steps": args.steps},
    }
    run = Simulation.load(args.checkpoint, sampler=sampler, n_chains=args.chains, n_thermalization=args.thermalization,
                          n_trajectories=args.trajectories, observables=["plaquette"])
    run.flow.load_state_dict(sim.flow.state_dict())
    table = run.run(progress=False)
    return table.attrs["sampler"]["integrator"]["step_size"], float(table["accepted"].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--minutes", type=float, default=3.0, help="extra training per penalty value")
    p.add_argument("--penalties", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--thermalization", type=int, default=100, help="tuning trajectories")
    p.add_argument("--trajectories", type=int, default=50, help="trajectories at the tuned step")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--length", type=float, default=0.5)
    p.add_argument("--n-eval", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'penalty':>8} {'steps':>6} {'loss':>9} {'ESS':>6} {'<|F|^2>/dof':>12} {'FTHMC step':>10} {'acc':>5}")
    for penalty in args.penalties:
        sim = Simulation.load(args.checkpoint)
        before = float(sim.history["seconds"].iloc[-1]) if sim.history is not None and len(sim.history) else 0.0
        steps_before = 0 if sim.history is None else len(sim.history)
        training = {**sim.to_spec()["training"], "force_penalty": penalty, "lr": args.lr, "schedule": "constant",
                    "n_steps": 10**9, "max_seconds": before + 60 * args.minutes}
        sim = Simulation.load(args.checkpoint, training=training)
        sim.train(progress=False)
        quality = sim.flow_quality(args.n_eval, torch.Generator().manual_seed(1))
        z = draw_prior(sim.action, sim.lattice_shape, 256, generator=torch.Generator().manual_seed(2), dtype=sim.dtype, device=sim.device)
        force2 = float(latent_force_penalty(sim.flow, sim.action, z)[2].detach())
        step, acc = tuned_step(sim, args)
        print(f"{penalty:>8.3g} {len(sim.history) - steps_before:>6} {quality['loss']:>9.3f} {quality['ess']:>6.3f} "
              f"{force2:>12.3f} {step:>10.4f} {acc:>5.2f}", flush=True)


if __name__ == "__main__":
    main()

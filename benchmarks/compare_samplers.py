"""HMC, FTHMC and flow independence Metropolis side by side on 2D U(1) (arXiv:2112.01586, Sec. 4), from one
flow checkpoint: a thin caller of ``lattice-flows compare`` (:mod:`lattice_flows.compare`), which does the work.

For each lattice shape, the samplers are built from the checkpoint (HMC: its theory without the flow; FTHMC and
flow IMH through its flow, optionally retrained on the larger lattice first) with the trajectory lengths and
run lengths given here, and :func:`lattice_flows.compare.compare` runs them from the same exact start
(``u1_exact``), each tuning its step during thermalization, and prints and writes the table (acceptance,
<exp(-delta_H)>, <cos x_P> and <Q^2> against exact, tau_int(Q) with lower bounds marked ``>=``, seconds per
trajectory and per independent Q, with the flow's training seconds amortized over ``--amortize`` samples, and
ratios to HMC) and the figures (Q and plaquette histories per sampler, the seed's Fig. 4; loss and ESS against
training step, Fig. 5) into ``--out/<L>x<L>``; ``--out/comparison.csv`` holds every shape's rows.

    # the flow trained on 8x8 at beta = 6 (benchmarks/train_flows.py ess ... --save b6.pt), then
    python benchmarks/compare_samplers.py b6.pt --shapes 8 16 --chains 16 --trajectories 500 --hmc-trajectories 20000

The same comparison from spec files and checkpoints of any theory: ``lattice-flows compare A B C ...``
(``docs/quickstart.md``). Times are from this machine (shared and noisy): read ratios, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from lattice_flows import Simulation
from lattice_flows.checkpoint import load_checkpoint
from lattice_flows.compare import DEFAULT_AMORTIZE, Contestant, compare

SAMPLERS = ("hmc", "fthmc", "flow_imh")


def sampler_section(name: str, args) -> dict:
    if name == "hmc":
        steps, length = args.hmc_steps, args.hmc_length
    elif name == "fthmc":
        steps, length = args.fthmc_steps, args.fthmc_length
    else:
        return {"name": "flow_imh"}
    integrator = {"name": args.integrator, "step_size": length / steps, "n_steps": steps}
    section = {"name": name, "integrator": integrator, "target_acceptance": args.target_acceptance}
    if name == "fthmc" and args.fthmc_inner > 1:  # two time scales: see FTHMC.fast_force
        integrator.update(name="nested_leapfrog", n_inner=args.fthmc_inner)
        section["fast_force"] = args.fthmc_fast
    return section


def run_settings(args, seed: int, sampler: str = "") -> dict:
    hmc = sampler == "hmc"
    return {
        "n_chains": args.chains,
        "n_thermalization": args.hmc_thermalization if hmc else args.thermalization,
        "n_trajectories": args.hmc_trajectories if hmc else args.trajectories,
        "seed": seed,
        "dtype": args.dtype,
        "device": args.device,
    }


def build(name: str, checkpoint: str, shape: list[int], args) -> Simulation:
    overrides = {
        "lattice": {"shape": shape},
        "sampler": sampler_section(name, args),
        "observables": ["plaquette", "topological_charge"],
        **run_settings(args, seed=args.seed, sampler=name),
    }
    if name == "hmc":  # the checkpoint's theory without its flow: no weights to read
        saved = {k: v for k, v in load_checkpoint(checkpoint)["spec"].items() if k not in ("flow", "training")}
        return Simulation.from_spec({**saved, **overrides})
    return Simulation.load(checkpoint, **overrides)


def retrain(checkpoint: str, shape: list[int], minutes: float, out: Path, args) -> tuple[str, float]:
    """Retrain the flow on ``shape`` for ``minutes``; returns the new checkpoint and the seconds spent."""
    sim = Simulation.load(checkpoint, lattice={"shape": shape})
    before = float(sim.history["seconds"].iloc[-1]) if sim.history is not None and len(sim.history) else 0.0
    training = {**sim.to_spec()["training"], "max_seconds": before + 60 * minutes, "n_steps": 10**9}
    sim = Simulation.load(checkpoint, lattice={"shape": shape}, training=training)
    sim.train(progress=False)
    path = out / f"flow_{shape[0]}x{shape[1]}.pt"
    sim.save(path)
    return str(path), float(sim.history["seconds"].iloc[-1]) - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a flow checkpoint (Simulation.save), trained at the beta to compare at")
    p.add_argument("--shapes", type=int, nargs="+", default=[8, 16], help="square lattice sizes L")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--thermalization", type=int, default=100, help="tuning trajectories per chain (not measured)")
    p.add_argument("--trajectories", type=int, default=500, help="measured trajectories per chain (flow samplers)")
    p.add_argument("--hmc-trajectories", type=int, default=20000, help="measured trajectories per chain of HMC")
    p.add_argument("--hmc-thermalization", type=int, default=200, help="tuning trajectories per chain of HMC")
    p.add_argument("--integrator", default="leapfrog")
    p.add_argument("--hmc-steps", type=int, default=10)
    p.add_argument("--hmc-length", type=float, default=1.0, help="trajectory length of HMC")
    p.add_argument("--fthmc-steps", type=int, default=10)
    p.add_argument("--fthmc-length", type=float, default=1.0, help="trajectory length of FTHMC")
    p.add_argument("--fthmc-inner", type=int, default=1, help="inner steps of FTHMC's fast force (nested leapfrog)")
    p.add_argument("--fthmc-fast", default="action", choices=("all", "action", "flow"),
                   help="which part of FTHMC's latent force takes the inner steps")
    p.add_argument("--target-acceptance", type=float, default=0.8)
    p.add_argument("--retrain-minutes", type=float, default=0.0, help="retrain the flow on each larger lattice first")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--equilibrate", type=int, default=200, help="HMC trajectories to the common start where no exact sampler applies")
    p.add_argument("--amortize", type=int, default=DEFAULT_AMORTIZE, help="samples the flow's training seconds are spread over")
    p.add_argument("--out", default="runs/compare_samplers", help="folder: <L>x<L>/ per shape (must not exist), comparison.csv")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base = Simulation.load(args.checkpoint)
    beta = base.to_spec()["action"]["beta"]
    history = base.history
    training_s = float(history["seconds"].iloc[-1]) if history is not None and len(history) else 0.0
    trained_shape = list(base.lattice_shape)
    print(f"# {args.checkpoint}: flow {json.dumps(base.to_spec()['flow'])}")
    steps = len(history) if history is not None else 0
    print(f"# trained on {trained_shape} at beta = {beta}: {steps} steps, {training_s:.0f} s")

    frames = []
    for L in args.shapes:
        shape = [L, L]
        checkpoint, extra = args.checkpoint, 0.0
        if shape != trained_shape and args.retrain_minutes > 0:
            checkpoint, extra = retrain(args.checkpoint, shape, args.retrain_minutes, out, args)
            print(f"# {L}x{L}: retrained the flow for {extra:.0f} s more: {checkpoint}", flush=True)
        contestants = []
        for name in args.samplers:
            sim = build(name, checkpoint, shape, args)
            if name != "hmc":
                quality = sim.flow_quality(1024, torch.Generator(device=sim.device).manual_seed(1))
                print(f"# {L}x{L} {name}: flow ESS {quality['ess']:.4f}, loss {quality['loss']:.2f}", flush=True)
            contestants.append(Contestant(label=name, source=checkpoint, simulation=sim))
        result = compare(contestants, out=out / f"{L}x{L}", equilibrate=args.equilibrate, amortize=args.amortize)
        frames.append(result.frame.assign(beta=beta, shape=f"{L}x{L}"))
    pd.concat(frames, ignore_index=True).to_csv(out / "comparison.csv", index=False)
    print(f"# every shape: {out / 'comparison.csv'}")


if __name__ == "__main__":
    main()

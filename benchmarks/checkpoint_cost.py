"""What saving the chains costs: a run with a checkpoint every N updates against the same run without.

    python benchmarks/checkpoint_cost.py                      # 8x8, 16 chains, 20000 trajectories, every 100
    python benchmarks/checkpoint_cost.py --trajectories 5000 --repeats 5

HMC on 2D U(1) (beta 2, leapfrog 10 x 0.1). The two kinds of run alternate (none, checkpointed,
none, ...) so that a change in the machine's load hits both; the medians of the wall-clock and CPU
times and their ratios are printed, with each repeat's seconds, so the noise shows (on a machine
shared with other jobs the CPU time is the steadier figure, but it leaves out the wait in ``fsync``). Each checkpoint rewrites
the small state (fields, generator, sampler) and appends the measurements since the last one as a
segment file (see ``Simulation.run``), so the cost grows linearly with the run, not quadratically.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lattice_flows import Simulation


def spec(shape: int, chains: int, trajectories: int, thermalization: int) -> dict:
    return {
        "lattice": {"shape": [shape, shape]},
        "action": {"name": "u1_wilson", "beta": 2.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": chains,
        "n_thermalization": thermalization,
        "n_trajectories": trajectories,
        "seed": 1,
    }


def seconds(sim: Simulation, checkpoint: Path | None, every: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run (the CPU time of this process leaves out other processes' load,
    but also the wait for the disk in ``fsync``)."""
    if checkpoint is not None:
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
        checkpoint.parent.mkdir(parents=True)
    wall, cpu = time.perf_counter(), time.process_time()
    sim.run(checkpoint=checkpoint, checkpoint_every=every, progress=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=8, help="lattice size L (L x L)")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--trajectories", type=int, default=20000)
    parser.add_argument("--thermalization", type=int, default=0)
    parser.add_argument("--every", type=int, default=100, help="checkpoint every this many updates")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--dir", help="folder for the checkpoints (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sim = Simulation.from_spec(spec(args.shape, args.chains, args.trajectories, args.thermalization))
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="checkpoint_cost."))
    checkpoint = root / "run" / "chains.pt"
    times: dict[str, list[tuple[float, float]]] = {"none": [], "checkpointed": []}
    try:
        for _ in range(args.repeats):
            times["none"].append(seconds(sim, None, args.every))
            times["checkpointed"].append(seconds(sim, checkpoint, args.every))
        segments = len(list(checkpoint.with_suffix(".records").glob("segment-*.pt")))
        size = checkpoint.stat().st_size
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    n_updates = args.thermalization + args.trajectories
    print(
        f"# {args.shape}x{args.shape}, {args.chains} chains, {n_updates} updates, checkpoint every {args.every} "
        f"({segments} segment files, state file {size / 1024:.0f} KiB), {args.repeats} repeats, {args.threads} thread(s)"
    )
    print(f"{'run':<14} {'median wall s':>13} {'median CPU s':>12}   repeats wall/CPU (s)")
    medians = {}
    for name, values in times.items():
        medians[name] = [statistics.median(v[i] for v in values) for i in (0, 1)]
        runs = " ".join(f"{w:.2f}/{c:.2f}" for w, c in values)
        print(f"{name:<14} {medians[name][0]:13.2f} {medians[name][1]:12.2f}   {runs}")
    ratios = [medians["checkpointed"][i] / medians["none"][i] for i in (0, 1)]
    print(f"ratio checkpointed / none: {ratios[0]:.3f} (wall clock), {ratios[1]:.3f} (CPU)")


if __name__ == "__main__":
    main()

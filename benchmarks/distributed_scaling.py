"""Weak scaling under torch.distributed: training steps and sampled trajectories per second against processes.

Weak scaling: every process keeps the same work (per-rank batch for training, per-rank chains for
sampling), so with ``N`` processes the global batch and the chain count grow ``N``-fold; ideal
scaling keeps steps per second constant and multiplies trajectories per second by ``N``.

    python benchmarks/distributed_scaling.py --processes 1 2               # CPU, gloo
    python benchmarks/distributed_scaling.py --processes 1 2 4 8 --device cuda --backend nccl   # a GPU node

Each point launches ``torchrun --standalone --nproc-per-node N`` on this script in worker mode;
every rank uses ``--threads`` CPU threads. The table is printed, and with matplotlib the figure is
saved to ``--out`` (default ``runs/distributed_scaling.png``). Times are medians over ``--repeats``
blocks; the machine is shared and noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPEC = {
    "lattice": {"shape": [8, 8]},
    "action": {"name": "u1_wilson", "beta": 2.0},
    "flow": {"name": "u1_plaquette_coupling", "kernel": "ncp", "n_layers": 8, "hidden": [8, 8]},
    "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}},
    "observables": ["plaquette", "topological_charge"],
    "dtype": "float32",
}


def worker(args) -> None:
    import torch

    from lattice_flows import Simulation, distributed

    torch.set_num_threads(args.threads)
    distributed.init_from_environment(args.backend)
    n = distributed.world_size()
    # training: per-rank batch fixed; one block = args.steps steps
    spec = {**SPEC, "device": args.device, "training": {"n_steps": 10**9, "batch_size": args.batch, "lr": 1e-3}}
    sim = Simulation.from_spec(spec)
    steps_per_s = []
    def train_steps(n: int) -> None:
        calls = []  # should_stop is asked once after every step (sim.history is set only on return)
        sim.train(progress=False, should_stop=lambda: len(calls.append(1) or calls) >= n)

    train_steps(3)  # warm-up
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        train_steps(args.steps)
        distributed.barrier()
        steps_per_s.append(args.steps / (time.perf_counter() - t0))
    # sampling: per-rank chains fixed, HMC without the flow
    run_spec = {k: v for k, v in spec.items() if k not in ("flow", "training")}
    run_spec.update(n_chains=args.chains * n, n_thermalization=0, n_trajectories=args.trajectories, device=args.device)
    trajectories_per_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        Simulation.from_spec(run_spec).run(progress=False)
        distributed.barrier()
        trajectories_per_s.append(args.chains * n * args.trajectories / (time.perf_counter() - t0))
    if distributed.is_main():
        print(json.dumps({
            "processes": n,
            "train_steps_per_s": statistics.median(steps_per_s),
            "global_batch": args.batch * n,
            "trajectories_per_s": statistics.median(trajectories_per_s),
            "chains": args.chains * n,
        }))


def launch(n: int, args) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__, "--worker",
        "--threads", str(args.threads), "--batch", str(args.batch), "--steps", str(args.steps), "--chains", str(args.chains),
        "--trajectories", str(args.trajectories), "--repeats", str(args.repeats), "--device", args.device,
    ]
    if args.backend:
        cmd += ["--backend", args.backend]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{n} processes failed:\n{result.stderr[-3000:]}")
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def launch_independent(n: int, args) -> dict:
    """``n`` single processes at once, no process group: what the machine gives ``n`` processes at all."""
    cmd = [
        sys.executable, __file__, "--worker", "--threads", str(args.threads), "--batch", str(args.batch),
        "--steps", str(args.steps), "--chains", str(args.chains), "--trajectories", str(args.trajectories),
        "--repeats", str(args.repeats), "--device", args.device,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    rows = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"independent process failed:\n{err[-3000:]}")
        rows.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
    return {
        "train_steps_per_s": statistics.mean(r["train_steps_per_s"] for r in rows),
        "trajectories_per_s": sum(r["trajectories_per_s"] for r in rows),
    }


def figure(rows: list[dict], path: Path) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("# matplotlib is not installed: no figure")
        return
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    n = [r["processes"] for r in rows]
    ax1.plot(n, [r["train_steps_per_s"] for r in rows], "o-", label="measured")
    ax1.plot(n, [rows[0]["train_steps_per_s"]] * len(n), "k--", lw=0.8, label="ideal (constant)")
    ax1.plot(n, [r["independent"]["train_steps_per_s"] for r in rows], "s:", color="gray", label="N independent processes")
    ax1.set(xlabel="processes", ylabel="training steps / s", title="training (per-rank batch fixed)")
    ax2.plot(n, [r["trajectories_per_s"] for r in rows], "o-", label="measured")
    ax2.plot(n, [rows[0]["trajectories_per_s"] * k for k in n], "k--", lw=0.8, label="ideal (linear)")
    ax2.plot(n, [r["independent"]["trajectories_per_s"] for r in rows], "s:", color="gray", label="N independent processes")
    ax2.set(xlabel="processes", ylabel="chain trajectories / s", title="HMC sampling (per-rank chains fixed)")
    for ax in (ax1, ax2):
        ax.set_xticks(n)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"# figure: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--batch", type=int, default=64, help="training batch per process")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    p.add_argument("--chains", type=int, default=16, help="HMC chains per process")
    p.add_argument("--trajectories", type=int, default=50, help="HMC trajectories per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks (the median is reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, choices=("gloo", "nccl"))
    p.add_argument("--out", default="runs/distributed_scaling.png")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for n in args.processes:
        row = launch(n, args)
        row["independent"] = launch_independent(n, args)
        rows.append(row)
    print(f"{'processes':>9} {'train steps/s':>13} {'global batch':>12} {'traj/s':>10} {'chains':>6} {'train eff.':>10} "
          f"{'sample eff.':>11} {'indep. steps/s':>14} {'indep. traj/s':>13}")
    for r in rows:
        k = r["processes"] / rows[0]["processes"]
        print(
            f"{r['processes']:>9} {r['train_steps_per_s']:>13.2f} {r['global_batch']:>12} {r['trajectories_per_s']:>10.0f} "
            f"{r['chains']:>6} {r['train_steps_per_s'] / rows[0]['train_steps_per_s']:>10.2f} "
            f"{r['trajectories_per_s'] / (k * rows[0]['trajectories_per_s']):>11.2f} "
            f"{r['independent']['train_steps_per_s']:>14.2f} {r['independent']['trajectories_per_s']:>13.0f}"
        )
    print("# efficiency: steps/s relative to 1 process (training), trajectories/s relative to N x 1 process (sampling)")
    print("# indep.: N single processes at once without a process group (mean steps/s each, total traj/s): the machine's")
    print("#   own limit for N processes; the distributed runs' shortfall beyond it is the communication")
    figure(rows, Path(args.out))


if __name__ == "__main__":
    main()

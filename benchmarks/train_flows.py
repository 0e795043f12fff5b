"""Flow training benchmarks for 2D U(1): training speed, ESS against wall-clock time, volume transfer.

    # steps per second of a training step (the reference: 16-layer NCP, hidden [8, 8], kernel 3,
    # 2 mixture components, batch 64, 8x8, float32), median of several timed blocks
    python benchmarks/train_flows.py speed

    # the kernel A/B of the coupling layers: the fused path (hand-written backward), the plain autograd
    # path and torch.compile of the plain path, on 8x8 and 16x16, one thread, also FTHMC trajectories/s
    python benchmarks/train_flows.py --threads 1 speed --paths fused plain compile --shapes 8 16 \
        --cases ncp spline --fthmc

    # ESS (on 1024 fresh samples) against training time for one spec, saving the trained flow
    python benchmarks/train_flows.py ess benchmarks/specs/u1_b2_8x8_ncp.toml --minutes 10 --save b2.pt

    # every kernel and flow at beta = 2 and 6 on 8x8, a few minutes each
    python benchmarks/train_flows.py matrix --minutes 2

    # a flow trained on 8x8 put on 16x16: ESS before and after a short retraining there
    python benchmarks/train_flows.py transfer b2.pt --shape 16 16 --minutes 1

Training time excludes the ESS evaluations. The machine is shared and noisy: read medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import attrs
import torch

from lattice_flows import Simulation
from lattice_flows.specfile import load_spec
from lattice_flows_u1.flows import coupling

SPECS = Path(__file__).parent / "specs"

REFERENCE = {
    "lattice": {"shape": [8, 8]},
    "action": {"name": "u1_wilson", "beta": 2.0},
    "flow": {
        "name": "u1_plaquette_coupling",
        "kernel": "ncp",
        "n_layers": 16,
        "hidden": [8, 8],
        "kernel_size": 3,
        "n_mixture": 2,
        "rectangles": False,  # as the published implementation: conditioners read frozen plaquettes only
    },
    "training": {"n_steps": 10**9, "batch_size": 64, "lr": 1e-3},
    "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}},
    "observables": [],
    "dtype": "float32",
}


#: The flows of ``speed --cases``: the reference and its variants (``--paths`` changes only the coupling flows).
CASES = {
    "ncp": REFERENCE,
    "ncp+rect": {**REFERENCE, "flow": {**REFERENCE["flow"], "rectangles": True}},
    "spline": {**REFERENCE, "flow": {**REFERENCE["flow"], "kernel": "spline", "n_bins": 8, "rectangles": True}},
    "stout": {**REFERENCE, "flow": {"name": "u1_stout", "n_layers": 16, "hidden": [8, 8], "kernel_size": 3}},
}


def case_spec(case: str, L: int, device: str) -> dict:
    """The spec of ``speed`` case ``case`` on an ``L x L`` lattice on ``device``."""
    return {**CASES[case], "lattice": {"shape": [L, L]}, "device": device}


def steps_per_second(spec: dict, blocks: int = 5, seconds: float = 3.0) -> tuple[float, float]:
    """Median and best of ``blocks`` measurements of training steps per second (after a warm-up of a
    second or more: the steps that ``torch.compile`` spends compiling are not timed)."""
    sim = Simulation.from_spec(spec)
    rates = []
    sim.training = attrs.evolve(sim.training, max_seconds=1.0)
    sim.train(progress=False)  # warm-up
    for _ in range(blocks):
        done = len(sim.history)
        spent = float(sim.history["seconds"].iloc[-1])
        sim.training = attrs.evolve(sim.training, max_seconds=spent + seconds)
        history = sim.train(progress=False)
        rates.append((len(history) - done) / (float(history["seconds"].iloc[-1]) - spent))
    return statistics.median(rates), max(rates)


def fthmc_trajectories_per_second(spec: dict, blocks: int = 5, seconds: float = 3.0, n_chains: int = 16) -> tuple[float, float]:
    """Median and best of ``blocks`` measurements of FTHMC trajectories per second through the
    (untrained) flow of ``spec``, ``n_chains`` chains, 10 leapfrog steps (each one force through the flow)."""
    spec = {**spec, "n_chains": n_chains,
            "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.05, "n_steps": 10}}}
    sim = Simulation.from_spec(spec)
    generator = sim.generator()
    state = sim.sampler.init(sim.initial_fields(generator), sim.action)
    for _ in range(2):  # warm-up (compiles the forward and its backward on the compile path)
        state, _ = sim.sampler.step(state, sim.action, generator)
    rates = []
    for _ in range(blocks):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            state, _ = sim.sampler.step(state, sim.action, generator)
            n += 1
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), max(rates)


def cmd_speed(args):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.blocks} blocks of {args.seconds} s, batch {REFERENCE['training']['batch_size']}, {REFERENCE['dtype']}")
    rows = []
    print(f"{'flow':>9} {'path':>8} {'L':>3} {'what':>9} {'median/s':>9} {'best/s':>8} {'vs fused':>9}", flush=True)
    for case in args.cases:
        paths = args.paths if CASES[case]["flow"]["name"] == "u1_plaquette_coupling" else args.paths[:1]
        for L in args.shapes:
            measures = [("train", steps_per_second)] + ([("fthmc", fthmc_trajectories_per_second)] if args.fthmc else [])
            for what, measure in measures:
                fused = None
                for path in paths:
                    previous = coupling.set_kernel_path(path)
                    try:
                        median, best = measure(case_spec(case, L, args.device), args.blocks, args.seconds)
                    except Exception as error:  # torch.compile may fail on a machine (no compiler, say)
                        print(f"{case:>9} {path:>8} {L:>3} {what:>9} failed: {type(error).__name__}: {error}", flush=True)
                        continue
                    finally:
                        coupling.set_kernel_path(previous)
                    if path == "fused":
                        fused = median
                    ratio = f"{median / fused:.2f}" if fused else "-"
                    rows.append((case, path, L, what, median, best))
                    print(f"{case:>9} {path:>8} {L:>3} {what:>9} {median:>9.1f} {best:>8.1f} {ratio:>9}", flush=True)
    return rows


def train_with_ess(sim: Simulation, minutes: float, n_points: int, n_eval: int, label: str = "") -> list[dict]:
    """Train for ``minutes`` (the time budget of the learning-rate schedule too), printing ESS on fresh
    samples at ``n_points`` times; returns the rows."""
    total = 60.0 * minutes
    eval_generator = torch.Generator(device=sim.device).manual_seed(12345)
    start = 0.0 if sim.history is None or len(sim.history) == 0 else float(sim.history["seconds"].iloc[-1])
    sim.training = attrs.evolve(sim.training, max_seconds=start + total)
    rows = []
    print(f"{'':>10}{'seconds':>9} {'steps':>7} {'steps/s':>8} {'loss':>10} {'ESS':>7}")
    for k in range(n_points + 1):
        budget = start + total * k / n_points
        if k > 0:
            sim.train(progress=False, pause_at_seconds=budget)
        quality = sim.flow_quality(n_eval, eval_generator)
        steps = 0 if sim.history is None else len(sim.history)
        seconds = 0.0 if not steps else float(sim.history["seconds"].iloc[-1])
        rate = (steps / seconds) if seconds else float("nan")
        rows.append({"seconds": seconds, "steps": steps, **quality})
        print(f"{label:>10}{seconds:>9.0f} {steps:>7d} {rate:>8.1f} {quality['loss']:>10.3f} {quality['ess']:>7.3f}", flush=True)
    return rows


def cmd_ess(args):
    spec = load_spec(args.spec)
    sim = Simulation.from_spec(spec)
    print(f"# {args.spec}: {sim.to_spec()['flow']}")
    train_with_ess(sim, args.minutes, args.points, args.n_eval)
    if args.save:
        sim.save(args.save)
        print(f"# saved to {args.save}")


def cmd_matrix(args):
    summary = []
    for beta in (int(b) for b in args.betas):
        for flow in args.flows:
            path = SPECS / f"u1_b{beta}_8x8_{flow}.toml"
            sim = Simulation.from_spec(load_spec(path))
            print(f"# beta={beta}, {flow}: {path.name}")
            rows = train_with_ess(sim, args.minutes, args.points, args.n_eval, label=f"b{beta} {flow}")
            summary.append((beta, flow, rows[-1]))
    print(f"\n{'beta':>4} {'flow':>7} {'steps':>7} {'steps/s':>8} {'final ESS':>10}")
    for beta, flow, row in summary:
        print(f"{beta:>4} {flow:>7} {row['steps']:>7d} {row['steps'] / row['seconds']:>8.1f} {row['ess']:>10.3f}")


def cmd_transfer(args):
    shape = list(args.shape)
    small = Simulation.load(args.checkpoint)
    eval_generator = torch.Generator().manual_seed(12345)
    print(f"# {args.checkpoint}: trained {len(small.history)} steps on {small.lattice_shape}, ESS there "
          f"{small.flow_quality(args.n_eval, eval_generator)['ess']:.3f}")
    # Retraining resumes the history (steps and seconds go on), so it runs at a constant rate of its own
    # rather than at the tail of the first run's schedule.
    training = {**small.to_spec()["training"], "schedule": "constant", "lr": args.lr, "n_steps": 10**9}
    big = Simulation.load(args.checkpoint, lattice={"shape": shape}, training=training)
    print(f"# on {shape} with the same weights, then retrained for {args.minutes} min at lr {args.lr}:")
    train_with_ess(big, args.minutes, args.points, args.n_eval, label=f"{shape[0]}x{shape[1]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", type=float, nargs="+", default=[2.0, 6.0], help="matrix: the betas")
    parser.add_argument("--flows", nargs="+", default=["ncp", "spline", "stout"], help="matrix: the flows")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--paths", nargs="+", choices=coupling.KERNEL_PATHS, default=["fused"],
                   help="kernel paths of the coupling layers to time (lattice_flows_u1.flows.coupling)")
    p.add_argument("--shapes", type=int, nargs="+", default=[8], help="lattice sizes L (L x L, multiples of 4)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="flows to time")
    p.add_argument("--fthmc", action="store_true", help="also FTHMC trajectories per second (16 chains, 10 steps)")
    p.add_argument("--device", default="cpu", help="torch device of the runs: cpu, cuda, ...")
    p.set_defaults(func=cmd_speed)
    for name, func in (("ess", cmd_ess), ("matrix", cmd_matrix), ("transfer", cmd_transfer)):
        p = sub.add_parser(name)
        if name == "ess":
            p.add_argument("spec")
            p.add_argument("--save")
        if name == "transfer":
            p.add_argument("checkpoint")
            p.add_argument("--shape", type=int, nargs=2, default=[16, 16])
            p.add_argument("--lr", type=float, default=5e-4, help="constant learning rate of the retraining")
        p.add_argument("--minutes", type=float, default=2.0)
        p.add_argument("--points", type=int, default=5, help="ESS evaluations along the way")
        p.add_argument("--n-eval", type=int, default=1024, help="samples per ESS evaluation")
        p.set_defaults(func=func)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.func(args)


if __name__ == "__main__":
    main()

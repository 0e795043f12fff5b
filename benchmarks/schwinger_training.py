"""Training a U(1) gauge flow toward the two-flavour Schwinger model, against training it on pure gauge.

One gauge flow, trained the same wall-clock time on 8x8 (a) toward the pure-gauge target ``u1_wilson`` and
(b) toward the full two-flavour target ``schwinger_det`` (``p ~ exp(-S_G) det(D^dag D)``, the exact dense
log det in the loss), next to the flow as it starts (``untrained``). Each is then judged under the *full*
target, on 8x8 and, with the same weights, on 16x16 (volume transfer):

- ``ESS``: self-normalised importance weights ``w = exp(-S_G) det(D^dag D) / q(x)`` on fresh flow samples,
  ``(sum w)^2 / (n sum w^2)`` (``Simulation.flow_quality`` with the action ``schwinger_det``, float64);
- ``IMH acc``: flow independence Metropolis (``flow_imh``) on ``schwinger_det``, the mean acceptance;
- ``FTHMC acc``: field-transformation HMC on ``schwinger`` (pseudofermions, CG) on 16x16, fixed step, a few
  trajectories, with plain HMC at the same step as reference.

The row ``exact pure gauge (reweighted)`` is the ESS of exact pure-gauge configurations (``u1_exact``'s
sampler) reweighted by ``det(D^dag D)``: what a perfect pure-gauge flow would reach, the ceiling of (a).

    python benchmarks/schwinger_training.py --flow spline --train-seconds 120
    python benchmarks/schwinger_training.py --flow poisson --train-seconds 60

Every number is measured in the run that prints it; checkpoints are written to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from lattice_flows import Simulation
from lattice_flows.training import effective_sample_size
from lattice_flows_schwinger.action import SchwingerDeterminant
from lattice_flows_u1.exact_sampling import sample_exact

FLOWS = {
    # the general tool: gauge-equivariant plaquette couplings (the spline kernel trains fastest at beta = 2)
    "spline": lambda a: {"name": "u1_plaquette_coupling", "kernel": "spline", "n_layers": 16, "hidden": [8, 8], "rectangles": True},
    "ncp": lambda a: {"name": "u1_plaquette_coupling", "kernel": "ncp", "n_layers": 16, "hidden": [8, 8], "rectangles": True},
    # the 2D-abelian special: every plaquette through one spline, started from the exact pure-gauge map
    "poisson": lambda a: {"name": "u1_plaquette_poisson", "n_bins": 64, "von_mises_beta": a.beta, "latent_beta": 0.0},
}


def full_action(args, pseudofermion: bool = False) -> dict:
    return {"name": "schwinger" if pseudofermion else "schwinger_det", "beta": args.beta, "mass": args.mass}


def train_spec(args, target: str) -> dict:
    action = {"name": "u1_wilson", "beta": args.beta} if target == "u1_wilson" else full_action(args)
    return {
        "lattice": {"shape": [args.train_shape, args.train_shape]},
        "action": action,
        "flow": FLOWS[args.flow](args),
        "training": {"n_steps": 10**7, "batch_size": args.batch_size, "lr": args.lr, "schedule": "cosine", "max_seconds": args.train_seconds},
        "sampler": {"name": "flow_imh"},
        "seed": args.seed,
        "dtype": "float32",
    }


def train(args, target: str, out: Path) -> tuple[Path, dict]:
    sim = Simulation.from_spec(train_spec(args, target))
    t0 = time.perf_counter()
    history = sim.train(progress=False)
    wall = time.perf_counter() - t0
    path = out / f"{args.flow}_{target}.pt"
    sim.save(path)
    tenth = max(1, len(history) // 10)
    info = {
        "steps": len(history),
        "seconds": float(history["seconds"].iloc[-1]),
        "wall": wall,
        "loss_first": float(history["loss"].iloc[:tenth].mean()),
        "loss_last": float(history["loss"].iloc[-tenth:].mean()),
        "ess_last": float(history["ess"].iloc[-tenth:].mean()),
    }
    return path, info


def untrained(args, out: Path) -> Path:
    """The flow as it starts (the same seed, so the same initial weights), as a checkpoint with no training."""
    spec = train_spec(args, "u1_wilson")
    spec["training"] = {**spec["training"], "n_steps": 1, "max_seconds": 0.0}
    sim = Simulation.from_spec(spec)
    path = out / f"{args.flow}_untrained.pt"
    sim.save(path)
    return path


def evaluate_sim(path: Path, args, shape: int, **overrides) -> Simulation:
    # the checkpoint's resolved observables may include the fermion ones, which a pure-gauge action refuses
    overrides.setdefault("observables", ["plaquette", "topological_charge"])
    return Simulation.load(path, lattice={"shape": [shape, shape]}, dtype="float64", **overrides)


def ess_full(path: Path, args, shape: int, n: int) -> tuple[float, float]:
    """ESS under the full target and, for reference, under pure gauge; the same fresh samples' generator seed."""
    g = lambda: torch.Generator().manual_seed(args.seed + 7)
    full = evaluate_sim(path, args, shape, action=full_action(args)).flow_quality(n, g(), batch_size=min(n, 128))
    gauge = evaluate_sim(path, args, shape, action={"name": "u1_wilson", "beta": args.beta}).flow_quality(n, g(), batch_size=min(n, 128))
    return full["ess"], gauge["ess"]


def imh_acceptance(path: Path, args, shape: int, n_chains: int, n_traj: int) -> float:
    sim = evaluate_sim(
        path, args, shape, action=full_action(args), sampler={"name": "flow_imh"}, observables=["plaquette"],
        n_chains=n_chains, n_thermalization=0, n_trajectories=n_traj, seed=args.seed + 11,
    )
    return float(sim.run(progress=False)["accepted"].mean())


def fthmc(path: Path | None, args, shape: int) -> tuple[float, float]:
    integrator = {"name": "leapfrog", "step_size": args.fthmc_step, "n_steps": args.fthmc_n_steps}
    common = dict(
        lattice={"shape": [shape, shape]}, action=full_action(args, pseudofermion=True), observables=["plaquette"],
        n_chains=args.fthmc_chains, n_thermalization=args.fthmc_thermalization, n_trajectories=args.fthmc_trajectories,
        seed=args.seed + 13, dtype="float64",
    )
    if path is None:
        sim = Simulation.from_spec({**common, "sampler": {"name": "hmc", "integrator": integrator}})
    else:
        sim = Simulation.load(path, sampler={"name": "fthmc", "integrator": integrator}, **common)
    table = sim.run(progress=False)
    return float(table["accepted"].mean()), float(table["delta_H"].abs().median())


def reweighted_exact_ess(args, shape: int, n: int) -> float:
    """ESS of exact pure-gauge configurations reweighted by det(D^dag D): a perfect pure-gauge flow's ESS."""
    x = sample_exact(args.beta, n, (shape, shape), generator=torch.Generator().manual_seed(args.seed + 5), dtype=torch.float64)
    det = SchwingerDeterminant(beta=args.beta, mass=args.mass)
    log_w = torch.cat([det.log_det(x[i : i + 128]) for i in range(0, n, 128)])
    return float(effective_sample_size(log_w))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow", choices=sorted(FLOWS), default="spline")
    p.add_argument("--beta", type=float, default=2.0)
    p.add_argument("--mass", type=float, default=0.2)
    p.add_argument("--train-shape", type=int, default=8)
    p.add_argument("--big-shape", type=int, default=16)
    p.add_argument("--train-seconds", type=float, default=120.0, help="training time per target (the same for both)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-eval", type=int, default=1024, help="fresh samples for the ESS on the training lattice")
    p.add_argument("--n-eval-big", type=int, default=256, help="fresh samples for the ESS on the big lattice")
    p.add_argument("--imh", type=int, nargs=2, default=[16, 64], metavar=("CHAINS", "PROPOSALS"), help="flow_imh on the training lattice")
    p.add_argument("--imh-big", type=int, nargs=2, default=[8, 16], metavar=("CHAINS", "PROPOSALS"), help="flow_imh on the big lattice")
    p.add_argument("--fthmc-step", type=float, default=0.025)
    p.add_argument("--fthmc-n-steps", type=int, default=20)
    p.add_argument("--fthmc-chains", type=int, default=8)
    p.add_argument("--fthmc-thermalization", type=int, default=2)
    p.add_argument("--fthmc-trajectories", type=int, default=4)
    p.add_argument("--no-fthmc", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/schwinger_training"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    small, big = args.train_shape, args.big_shape
    t_start = time.perf_counter()

    print(f"# flow {args.flow}: {FLOWS[args.flow](args)}")
    print(f"# beta = {args.beta}, mass = {args.mass}; trained on {small}x{small}, float32, batch {args.batch_size}, lr {args.lr} "
          f"cosine, {args.train_seconds:g} s per target; evaluated in float64 under the full target schwinger_det")
    paths = {"untrained": untrained(args, args.out)}
    print(f"\n{'trained on':<16} {'steps':>6} {'seconds':>8} {'s/step':>7} {'loss first 10%':>15} {'loss last 10%':>14} {'batch ESS last 10%':>19}")
    for target in ("u1_wilson", "schwinger_det"):
        paths[target], info = train(args, target, args.out)
        print(f"{target:<16} {info['steps']:>6} {info['seconds']:>8.1f} {info['seconds'] / info['steps']:>7.3f} "
              f"{info['loss_first']:>15.2f} {info['loss_last']:>14.2f} {info['ess_last']:>19.3f}", flush=True)
    print("(loss = mean(log q + S) of the training target: the two targets' losses are not comparable)")

    print(f"\nESS under the full target (and under pure gauge u1_wilson, for reference); flow_imh acceptance on schwinger_det")
    print(f"{'flow':<32} {'shape':>6} {'n':>5} {'ESS full':>9} {'ESS gauge':>10} {'IMH acc':>8}")
    rows = [(f"exact pure gauge (reweighted)", None)] + [(f"{args.flow} {k}", v) for k, v in paths.items()]
    for shape, n, (chains, props) in ((small, args.n_eval, args.imh), (big, args.n_eval_big, args.imh_big)):
        for label, path in rows:
            if path is None:
                print(f"{label:<32} {f'{shape}x{shape}':>6} {n:>5} {reweighted_exact_ess(args, shape, n):>9.4f} {'1':>10} {'-':>8}", flush=True)
                continue
            e_full, e_gauge = ess_full(path, args, shape, n)
            acc = imh_acceptance(path, args, shape, chains, props)
            print(f"{label:<32} {f'{shape}x{shape}':>6} {n:>5} {e_full:>9.4f} {e_gauge:>10.4f} {acc:>8.3f}", flush=True)
    print(f"(IMH: {args.imh[0]} chains x {args.imh[1]} proposals on {small}x{small}, {args.imh_big[0]} x {args.imh_big[1]} on {big}x{big})")

    if not args.no_fthmc:
        print(f"\nFTHMC on schwinger (pseudofermions) on {big}x{big}: leapfrog {args.fthmc_step} x {args.fthmc_n_steps}, "
              f"{args.fthmc_chains} chains x {args.fthmc_trajectories} trajectories after {args.fthmc_thermalization}, float64")
        print(f"{'sampler':<32} {'acceptance':>10} {'median |dH|':>12}")
        for label, path in [("hmc (no flow)", None)] + [(f"fthmc {args.flow} {k}", v) for k, v in paths.items()]:
            acc, dh = fthmc(path, args, big)
            print(f"{label:<32} {acc:>10.3f} {dh:>12.3g}", flush=True)
    print(f"\n# total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()

"""The von Mises start of ``u1_plaquette_poisson`` at large beta: the measurements behind its settings.

    # FTHMC acceptance and median delta_H at a fixed step, one latent_beta after another (16x16, beta = 6)
    python benchmarks/poisson_start.py --step-size 0.1 scan --latent-betas 0 1 2 3
    # the residue of the single-plaquette latent force d/du (-beta cos h(u) - log h'(u)), zero for the exact map
    python benchmarks/poisson_start.py residue --n-bins 32 64 128 256
    # the ESS of the flow's proposals (latent_beta = 0: the exact infinite-volume map)
    python benchmarks/poisson_start.py ess --shapes 8 16
    # an untrained checkpoint, for benchmarks/compare_samplers.py
    python benchmarks/poisson_start.py save runs/b6_poisson_start.pt --latent-beta 2

Times are not measured here; benchmarks/compare_samplers.py measures costs.
"""

from __future__ import annotations

import argparse
import math

import torch

from lattice_flows import Simulation


def flow_section(args, latent_beta: float, n_bins: int | None = None) -> dict:
    return {
        "name": "u1_plaquette_poisson",
        "n_bins": n_bins or args.n_bins,
        "von_mises_beta": args.beta,
        "latent_beta": latent_beta,
    }


def spec(args, latent_beta: float, shape: int) -> dict:
    return {
        "lattice": {"shape": [shape, shape]},
        "action": {"name": "u1_wilson", "beta": args.beta},
        "flow": flow_section(args, latent_beta),
        "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": args.step_size, "n_steps": args.n_steps}},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": args.chains,
        "n_thermalization": args.thermalization,
        "n_trajectories": args.trajectories,
        "seed": args.seed,
        "dtype": "float64",
        "start": "cold",
    }


def scan(args) -> None:
    print(f"# beta = {args.beta}, {args.shape}x{args.shape}, step {args.step_size} x {args.n_steps}, "
          f"{args.chains} chains x {args.trajectories} trajectories after {args.thermalization}, cold start, {args.n_bins} bins")
    print(f"{'latent_beta':>11} {'acceptance':>10} {'median dH':>10} {'<cos x_P>':>10} {'<Q^2>':>7}")
    for latent_beta in args.latent_betas:
        table = Simulation.from_spec(spec(args, latent_beta, args.shape)).run()
        print(f"{latent_beta:>11g} {table['accepted'].mean():>10.3f} {table['delta_H'].median():>10.3g} "
              f"{table['plaquette'].mean():>10.4f} {(table['topological_charge'] ** 2).mean():>7.3f}")


def residue(args) -> None:
    from lattice_flows_u1.flows.poisson import PlaquettePoissonFlow

    bands = [(0.0, 2.5), (2.5, 3.0), (3.0, 3.1), (3.1, 3.14), (3.14, math.pi)]
    print(f"# beta = {args.beta}, latent_beta = 0: max |d/du (-beta cos h(u) - log h'(u))| in bands of |u|")
    print(f"{'n_bins':>6} " + " ".join(f"{f'{lo}-{hi:.4g}':>12}" for lo, hi in bands))
    for n_bins in args.n_bins_list:
        params = {k: v for k, v in flow_section(args, 0.0, n_bins).items() if k != "name"}
        flow = PlaquettePoissonFlow(PlaquettePoissonFlow.Config(**params), (4, 4)).double()
        u = torch.linspace(-math.pi, math.pi, 400001, dtype=torch.float64)[:-1].requires_grad_(True)
        theta, log_slope = flow.spline(u)
        (force,) = torch.autograd.grad((-args.beta * torch.cos(theta) - log_slope).sum(), u)
        size = u.detach().abs()
        cells = [float(force[(size >= lo) & (size < hi)].abs().max()) for lo, hi in bands]
        print(f"{n_bins:>6} " + " ".join(f"{c:>12.3g}" for c in cells))


def ess(args) -> None:
    for shape in args.shapes:
        sim = Simulation.from_spec(spec(args, args.latent_beta, shape))
        g = torch.Generator().manual_seed(args.seed)
        log_w = []
        with torch.no_grad():
            for _ in range(args.batches):
                z = sim.action.sample_prior(1024, sim.lattice_shape, generator=g, dtype=torch.float64, device="cpu")
                x, logdet = sim.flow(z)
                log_w.append(logdet - sim.action(x))
        w = torch.exp(torch.cat(log_w) - torch.cat(log_w).max())
        print(f"{shape}x{shape}, beta = {args.beta}, latent_beta = {args.latent_beta}: "
              f"ESS {float(w.sum() ** 2 / (w * w).sum()) / len(w):.3f} on {len(w)} samples")


def save(args) -> None:
    s = spec(args, args.latent_beta, 8)
    s["training"] = {"n_steps": 1, "batch_size": 64}
    Simulation.from_spec(s).save(args.path)
    print(f"saved the untrained flow {s['flow']} to {args.path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--n-bins", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    # the FTHMC run of `scan` (the other commands only build its spec)
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--thermalization", type=int, default=20)
    p.add_argument("--trajectories", type=int, default=40)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scan")
    s.add_argument("--latent-betas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    s.add_argument("--shape", type=int, default=16)
    r = sub.add_parser("residue")
    r.add_argument("--n-bins", dest="n_bins_list", type=int, nargs="+", default=[32, 64, 128, 256])
    e = sub.add_parser("ess")
    e.add_argument("--shapes", type=int, nargs="+", default=[8, 16])
    e.add_argument("--latent-beta", type=float, default=0.0)
    e.add_argument("--batches", type=int, default=8)
    v = sub.add_parser("save")
    v.add_argument("path")
    v.add_argument("--latent-beta", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"scan": scan, "residue": residue, "ess": ess, "save": save}[args.command](args)


if __name__ == "__main__":
    main()

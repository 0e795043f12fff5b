"""HMC throughput for 2D U(1): link updates per second and seconds per trajectory.

A link update is one molecular-dynamics step of one link, so a trajectory of ``n_steps`` steps on
``n_chains`` chains of ``L x L`` counts ``n_chains * 2 * L^2 * n_steps`` link updates. Each entry is
the median over repeats of the time of a batch of trajectories (after a warm-up), so a noisy
shared machine affects it less. The baseline is a straightforward one-chain HMC in eager PyTorch
with an autograd force, as research codes write it.

    python benchmarks/hmc_throughput.py                # float32, L = 8..64, 1 and 64 chains
    python benchmarks/hmc_throughput.py --dtype float64 --sizes 16 --chains 1 64
    python benchmarks/hmc_throughput.py --device cuda  # on a GPU (timings synchronize the device)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lattice_flows import Simulation


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_trajectories(step, n_trajectories: int, repeats: int) -> float:
    """Median seconds per trajectory of ``step()`` over ``repeats`` batches of ``n_trajectories``
    (the GPU, if one is used, is synchronized before each clock reading)."""
    step()  # warm-up
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        for _ in range(n_trajectories):
            step()
        _synchronize()
        times.append((time.perf_counter() - start) / n_trajectories)
    return statistics.median(times)


def lattice_flows_step(L: int, n_chains: int, dtype: str, n_steps: int, device: str = "cpu"):
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": [L, L]},
            "action": {"name": "u1_wilson", "beta": 3.0},
            "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 1.0 / n_steps, "n_steps": n_steps}},
            "observables": [],
            "n_chains": n_chains,
            "dtype": dtype,
            "device": device,
        }
    )
    generator = sim.generator()
    state = [sim.sampler.init(sim.initial_fields(generator), sim.action)]

    @torch.no_grad()
    def step():
        state[0], _ = sim.sampler.step(state[0], sim.action, generator)

    return step


def straightforward_step(L: int, dtype: str, n_steps: int, beta: float = 3.0, device: str = "cpu"):
    """One chain, plaquettes by roll, force by autograd, leapfrog written out: the usual research code."""
    dt = getattr(torch, dtype)
    x = [(torch.rand(2, L, L, dtype=dt, device=device) * 2 - 1) * math.pi]
    eps = 1.0 / n_steps

    def action(u):
        p = u[0] + torch.roll(u[1], -1, 0) - torch.roll(u[0], -1, 1) - u[1]
        return beta * torch.sum(1 - torch.cos(p))

    def force(u):
        u = u.detach().requires_grad_(True)
        return torch.autograd.grad(action(u), u)[0]

    def step():
        u0 = x[0]
        p = torch.randn_like(u0)
        h0 = 0.5 * torch.sum(p * p) + action(u0)
        u = u0.clone()
        p = p - 0.5 * eps * force(u)
        for i in range(n_steps):
            u = u + eps * p
            if i < n_steps - 1:
                p = p - eps * force(u)
        p = p - 0.5 * eps * force(u)
        h1 = 0.5 * torch.sum(p * p) + action(u)
        if torch.rand((), device=u.device) < torch.exp(h0 - h1):
            x[0] = u.detach()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--n-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.5, help="approximate seconds per repeat")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.dtype}, leapfrog n_steps={args.n_steps}")
    print(f"{'L':>4} {'chains':>6} {'s/trajectory':>13} {'Mlink-updates/s':>16} {'s/traj/chain':>13}")
    per_traj = {}
    for L in args.sizes:
        for n_chains in args.chains:
            step = lattice_flows_step(L, n_chains, args.dtype, args.n_steps, args.device)
            probe = time_trajectories(step, 1, 1)
            n = max(1, int(args.budget / max(probe, 1e-6)))
            t = time_trajectories(step, n, args.repeats)
            per_traj[(L, n_chains)] = t
            rate = n_chains * 2 * L * L * args.n_steps / t
            print(f"{L:>4} {n_chains:>6} {t:>13.3e} {rate / 1e6:>16.1f} {t / n_chains:>13.3e}", flush=True)

    for L in args.sizes:
        if (L, 1) in per_traj and (L, 64) in per_traj:
            print(f"L={L}: 64 chains cost {per_traj[(L, 64)] / per_traj[(L, 1)]:.1f}x one chain (64x if batching did nothing)")
    for L in args.sizes:
        if (L, 1) in per_traj:
            base = straightforward_step(L, args.dtype, args.n_steps, device=args.device)
            probe = time_trajectories(base, 1, 1)
            t = time_trajectories(base, max(1, int(args.budget / max(probe, 1e-6))), args.repeats)
            print(f"L={L}, 1 chain: straightforward {t:.3e} s/trajectory; lattice-flows is {t / per_traj[(L, 1)]:.2f}x as fast")


if __name__ == "__main__":
    main()

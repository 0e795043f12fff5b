"""Would flow layers between the switching steps pay? Non-equilibrium protocols with and without a transport map.

Issue 16 asks whether flow layers inside the ``nonequilibrium`` sampler (a stochastic normalizing flow,
arXiv:2201.08862) make it cheaper than the flow-free protocol. This measures the case that needs no training:
before each HMC trajectory of the protocol from ``u1_wilson`` at ``--prior-beta`` to ``--beta``, the fields go
through ``--layers`` plaquette coupling layers started as the single-plaquette von Mises map from ``beta_{k-1}``
toward ``beta_{k-1} + reach (beta_k - beta_{k-1})`` (``u1_plaquette_coupling`` with ``hidden = []``; with
``--context-free`` the same map without the conditioner, :class:`VonMisesTransport`, which is what the sampler
``u1_nonequilibrium_transport`` applies), and the work gains ``S_k(f(x)) - S_{k-1}(x) - log|det df/dx|`` instead
of ``S_k(x) - S_{k-1}(x)``. Both keep the weight exact (the map is invertible and its Jacobian is counted), so
only the variance of the work and the cost change. The 4 layers of direction 0 move each plaquette once and
half of the way (``reach 1``: to the midpoint of the step).

Every protocol starts from ``--chains`` exact configurations of the prior (``sample_exact``, the prior's own
exact sampler, so no prior chain is needed); it does not run the Markov chain, it measures what decides its
acceptance. Printed per protocol (``--n-switch`` values, each plain and transported): ``var W`` (with a
bootstrap error), the pair acceptance ``<min(1, exp(W_j - W_i))>`` over all pairs of independent protocols
(what the chain's acceptance would be with a fresh prior sample per update), and the CPU seconds per protocol
and chain (this process, one thread), split into HMC trajectories and flow layers.

    python benchmarks/nonequilibrium_transport.py                                   # 16x16, prior beta 3: ~2 min
    python benchmarks/nonequilibrium_transport.py --context-free --n-switch 200 50 25
    python benchmarks/nonequilibrium_transport.py --shape 8 --prior-beta 2 --n-switch 100 30 --context-free

CPU time of one process on a machine that may be shared: read the ratios, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from lattice_flows import Simulation
from lattice_flows_hmc.hmc import hamiltonian_trajectory, metropolis, select
from lattice_flows_hmc.nonequilibrium import InterpolatedAction
from lattice_flows_u1.exact_sampling import sample_exact
from lattice_flows_u1.flows.coupling import PlaquetteCouplingFlow
from lattice_flows_u1.flows.von_mises_transport import VonMisesTransport


def transport_flows(betas: list[float], layers: int, n_bins: int, shape: tuple[int, int],
                    reach: float = 1.0) -> list[PlaquetteCouplingFlow]:
    """One flow per step ``k = 1 .. n``: the von Mises start with ``latent_beta = betas[k - 1]`` and
    ``von_mises_beta = betas[k - 1] + reach (betas[k] - betas[k - 1])``. Its ``mu = 0`` layers (the first 4) map
    the plaquettes from ``latent_beta`` to the mean of the two, its ``mu = 1`` layers the rest of the way."""
    return [
        PlaquetteCouplingFlow(
            PlaquetteCouplingFlow.Config(n_layers=layers, hidden=(), kernel="spline", n_bins=n_bins,
                                         von_mises_beta=lo + reach * (hi - lo), latent_beta=lo),
            shape,
        ).double()
        for lo, hi in zip(betas[:-1], betas[1:])
    ]


def protocol(args, n_switch: int, transport: bool, seed: int) -> dict:
    """Works ``(B,)`` of ``--chains`` protocols from exact prior fields, and their CPU seconds."""
    shape = (args.shape, args.shape)
    sim = Simulation.from_spec({
        "dtype": "float64", "lattice": {"shape": list(shape)}, "action": {"name": "u1_wilson", "beta": args.beta},
        "sampler": {"name": "nonequilibrium", "prior": {"name": "u1_wilson", "beta": args.prior_beta},
                    "n_switch": n_switch, "integrator": {"name": "leapfrog", "step_size": args.step_size,
                                                         "n_steps": args.n_steps}},
    })
    sampler, action = sim.sampler, sim.action
    betas = [args.prior_beta + (args.beta - args.prior_beta) * k / n_switch for k in range(n_switch + 1)]
    flows = []
    if transport and args.context_free:  # what u1_nonequilibrium_transport applies
        flows = [VonMisesTransport(lo, lo + args.reach * (hi - lo), n_layers=args.layers, n_bins=args.n_bins)
                 for lo, hi in zip(betas[:-1], betas[1:])]
    elif transport:
        flows = transport_flows(betas, args.layers, args.n_bins, shape, args.reach)
    g = torch.Generator().manual_seed(seed)
    x = sample_exact(args.prior_beta, args.chains, shape, generator=g, dtype=torch.float64)
    work = torch.zeros(args.chains, dtype=torch.float64)
    cpu_hmc = cpu_flow = 0.0
    actions = [InterpolatedAction(sampler.prior, action, k / n_switch) for k in range(n_switch + 1)]
    with torch.no_grad():
        for k in range(1, n_switch + 1):
            t0 = time.process_time()
            if transport:
                x1, logdet = flows[k - 1](x)
                work = work + actions[k](x1) - actions[k - 1](x) - logdet
                x = action.normalize(x1)
            else:
                work = work + actions[k](x) - actions[k - 1](x)
            t1 = time.process_time()
            cpu_flow += t1 - t0
            if k < n_switch:
                p = action.phase_space.sample_momenta(x, g)
                x1, _, delta_H = hamiltonian_trajectory(sampler.integrator, x, p, actions[k], action.phase_space)
                x = action.normalize(select(metropolis(delta_H, g), x1, x))
            cpu_hmc += time.process_time() - t1
    if not transport:  # the work terms alone, no flow: count them with the trajectories
        cpu_hmc, cpu_flow = cpu_hmc + cpu_flow, 0.0
    return {"work": work, "cpu_hmc": cpu_hmc / args.chains, "cpu_flow": cpu_flow / args.chains}


def pair_acceptance(work: torch.Tensor) -> float:
    d = work[None, :] - work[:, None]
    off = ~torch.eye(work.numel(), dtype=torch.bool)
    return float(torch.clamp(torch.exp(d[off]), max=1.0).mean())


def bootstrap(work: torch.Tensor, f, n: int = 200, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([f(work[torch.randint(work.numel(), (work.numel(),), generator=g)]) for _ in range(n)])
    return float(values.std())


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, default=16, help="square lattice size L")
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--prior-beta", type=float, default=3.0)
    p.add_argument("--n-switch", type=int, nargs="+", default=[200, 100])
    p.add_argument("--layers", type=int, default=4, help="coupling layers per step (4: every plaquette active once)")
    p.add_argument("--n-bins", type=int, default=16)
    p.add_argument("--reach", type=float, default=1.0,
                   help="von_mises_beta = beta_{k-1} + reach (beta_k - beta_{k-1}); with 4 layers (mu = 0 only) the map "
                   "covers half of that: reach 1 takes each plaquette half way, reach 2 all the way")
    p.add_argument("--context-free", action="store_true",
                   help="the layers without their conditioner (VonMisesTransport, what u1_nonequilibrium_transport applies): "
                   "the same map (to float32 rounding of the flow's start), at a fraction of the cost")
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--n-steps", type=int, default=5)
    p.add_argument("--chains", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.chains < 2:
        p.error(f"--chains must be at least 2 (pairs of protocols), got {args.chains}")
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread; u1_wilson {args.shape}x"
          f"{args.shape}, protocols from beta {args.prior_beta:g} to {args.beta:g}, {args.chains} from exact prior "
          f"fields, HMC {args.step_size:g} x {args.n_steps} per step; transport: {args.layers} von Mises coupling layers, "
          f"reach {args.reach:g}{', context-free' if args.context_free else ''}")
    print(f"{'n_switch':>8} {'transport':>9} {'var W':>15} {'pair acceptance':>16} {'CPU s/protocol':>15} "
          f"{'(HMC)':>8} {'(flows)':>8}")
    rows = []
    for n_switch in args.n_switch:
        for transport in (False, True):
            r = protocol(args, n_switch, transport, args.seed)
            w = r["work"]
            row = {"n_switch": n_switch, "transport": transport, "var W": float(w.var()),
                   "var W err": bootstrap(w, lambda v: float(v.var())), "pair acceptance": pair_acceptance(w),
                   "pair acceptance err": bootstrap(w, pair_acceptance), "cpu": r["cpu_hmc"] + r["cpu_flow"],
                   "cpu hmc": r["cpu_hmc"], "cpu flow": r["cpu_flow"]}
            rows.append(row)
            print(f"{n_switch:>8} {str(transport):>9} {row['var W']:>7.3f}±{row['var W err']:<7.3f} "
                  f"{row['pair acceptance']:>8.3f}±{row['pair acceptance err']:<7.3f} {row['cpu']:>15.2e} "
                  f"{row['cpu hmc']:>8.1e} {row['cpu flow']:>8.1e}", flush=True)
    plain = {r["n_switch"]: r for r in rows if not r["transport"]}
    for r in rows:
        if r["transport"]:
            print(f"# n_switch {r['n_switch']}: transport costs {r['cpu'] / plain[r['n_switch']]['cpu']:.1f}x the "
                  f"plain protocol per protocol, var W x {r['var W'] / plain[r['n_switch']]['var W']:.2f}")
    return rows


if __name__ == "__main__":
    main()

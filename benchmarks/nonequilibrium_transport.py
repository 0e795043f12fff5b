"""Would flow layers between the switching steps pay? Non-equilibrium protocols with and without a transport map.

Issue 16 asks whether flow layers inside the ``nonequilibrium`` sampler (a stochastic normalizing flow,
arXiv:2201.08862) make it cheaper than the flow-free protocol. This measures the case that needs no training:
before each HMC trajectory of the protocol from ``u1_wilson`` at ``--prior-beta`` to ``--beta``, the fields go
through ``--layers`` plaquette coupling layers started as the single-plaquette von Mises map from ``beta_{k-1}``
toward ``beta_{k-1} + reach (beta_k - beta_{k-1})`` (``u1_plaquette_coupling`` with ``hidden = []``; with
``--context-free`` the same map without the conditioner, ``VonMisesTransport`` of
``lattice_flows_u1.flows.von_mises_transport``, what the sampler ``u1_nonequilibrium_transport`` applies), and
the work gains ``S_k(f(x)) - S_{k-1}(x) - log|det df/dx|`` instead
of ``S_k(x) - S_{k-1}(x)``. Both keep the weight exact (the map is invertible and its Jacobian is counted), so
only the variance of the work and the cost change. The 4 layers of direction 0 move each plaquette once and
half of the way (``reach 1``: to the midpoint of the step).

Every protocol starts from ``--chains`` exact configurations of the prior (``sample_exact``, the prior's own
exact sampler) and runs as the samplers run it (``NonEquilibrium.propose``: one HMC trajectory on the prior,
then the ``n_switch`` steps); it does not run the Markov chain, it measures what decides its acceptance.
Printed per protocol (``--n-switch`` values, each plain and transported): ``var W`` (with a bootstrap error),
the pair acceptance ``<min(1, exp(W_j - W_i))>`` over all pairs of independent protocols (what the chain's
acceptance would be with a fresh prior sample per update), and the CPU seconds per protocol and chain (this
process, one thread).

    python benchmarks/nonequilibrium_transport.py                                   # 16x16, prior beta 3: ~2 min
    python benchmarks/nonequilibrium_transport.py --context-free --n-switch 200 50 25
    python benchmarks/nonequilibrium_transport.py --shape 8 --prior-beta 2 --n-switch 100 30 --context-free
    python benchmarks/nonequilibrium_transport.py --layout checkerboard --n-switch 50 --reach 0.5   # four-link layers

CPU time of one process on a machine that may be shared: read the ratios, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import attrs

import torch

from lattice_flows import Simulation
from lattice_flows_u1.exact_sampling import sample_exact
from lattice_flows_u1.flows.checkerboard_transport import CheckerboardTransport
from lattice_flows_u1.flows.coupling import PlaquetteCouplingFlow
from lattice_flows_u1.nonequilibrium import U1NonEquilibriumTransport


@functools.lru_cache(maxsize=4096)
def coupling_flow(beta_from: float, beta_to: float, layers: int, n_bins: int, shape: tuple[int, int]) -> PlaquetteCouplingFlow:
    """``u1_plaquette_coupling`` with ``hidden = []`` at its von Mises start from ``beta_from`` toward ``beta_to``:
    the map of :class:`VonMisesTransport` with the conditioner's cost (float64)."""
    return PlaquetteCouplingFlow(
        PlaquetteCouplingFlow.Config(n_layers=layers, hidden=(), kernel="spline", n_bins=n_bins,
                                     von_mises_beta=beta_to, latent_beta=beta_from),
        shape,
    ).double()


class ThroughCouplingFlows(U1NonEquilibriumTransport):
    """``u1_nonequilibrium_transport`` whose steps apply :func:`coupling_flow` instead of the context-free layers."""

    def transport(self, beta_from: float, beta_to: float):
        return lambda x: coupling_flow(beta_from, beta_to, self.transport_layers, self.n_bins, tuple(x.shape[2:]))(x)


@functools.lru_cache(maxsize=4096)
def checkerboard(beta_from: float, beta_to: float, n_bins: int) -> CheckerboardTransport:
    """The two four-link checkerboard layers, each plaquette moved once all the way from ``beta_from`` to ``beta_to``."""
    return CheckerboardTransport(beta_from, beta_to, n_bins=n_bins)


class ThroughCheckerboard(U1NonEquilibriumTransport):
    """``u1_nonequilibrium_transport`` whose steps apply :func:`checkerboard` instead of the one-link layers."""

    def transport(self, beta_from: float, beta_to: float):
        return checkerboard(beta_from, beta_to, self.n_bins)


def protocol(args, n_switch: int, transport: bool, seed: int) -> dict:
    """Works ``(B,)`` of ``--chains`` protocols (``NonEquilibrium.propose``, one prior trajectory first) from exact
    prior fields, and their CPU seconds per protocol and chain (after a first protocol has built the maps)."""
    shape = (args.shape, args.shape)
    sampler = {"name": "nonequilibrium", "prior": {"name": "u1_wilson", "beta": args.prior_beta}, "n_switch": n_switch,
               "prior_updates": 1, "integrator": {"name": "leapfrog", "step_size": args.step_size, "n_steps": args.n_steps}}
    if transport:
        sampler.update(name="u1_nonequilibrium_transport", transport_layers=args.layers, transport_reach=args.reach,
                       n_bins=args.n_bins)
    sim = Simulation.from_spec({"dtype": "float64", "lattice": {"shape": list(shape)},
                                "action": {"name": "u1_wilson", "beta": args.beta}, "sampler": sampler})
    chosen = sim.sampler
    if transport and (args.layout == "checkerboard" or not args.context_free):
        kind = ThroughCheckerboard if args.layout == "checkerboard" else ThroughCouplingFlows
        chosen = kind(**{f.name: getattr(chosen, f.name) for f in attrs.fields(type(chosen))})
    g = torch.Generator().manual_seed(seed)
    y = sample_exact(args.prior_beta, args.chains, shape, generator=g, dtype=torch.float64)
    # builds (and caches) every step's map, as a chain does on its first update, so the timing is a protocol's
    chosen.propose(y[:2], sim.action, torch.Generator().manual_seed(seed + 1))
    t0 = time.process_time()
    _, _, work, _ = chosen.propose(y, sim.action, g)
    return {"work": work, "cpu": (time.process_time() - t0) / args.chains}


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
    p.add_argument("--layout", choices=("stripes", "checkerboard"), default="stripes",
                   help="stripes: the one-link layers above; checkerboard: the two four-link layers of CheckerboardTransport "
                   "(context-free), which take each plaquette all the way to beta_{k-1} + reach (beta_k - beta_{k-1}), so "
                   "reach 0.5 is the stripes' reach 1")
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
          f"reach {args.reach:g}{', context-free' if args.context_free else ''}, layout {args.layout}")
    print(f"{'n_switch':>8} {'transport':>9} {'var W':>15} {'pair acceptance':>16} {'CPU s/protocol':>15}")
    rows = []
    for n_switch in args.n_switch:
        for transport in (False, True):
            r = protocol(args, n_switch, transport, args.seed)
            w = r["work"]
            row = {"n_switch": n_switch, "transport": transport, "var W": float(w.var()),
                   "var W err": bootstrap(w, lambda v: float(v.var())), "pair acceptance": pair_acceptance(w),
                   "pair acceptance err": bootstrap(w, pair_acceptance), "cpu": r["cpu"]}
            rows.append(row)
            print(f"{n_switch:>8} {str(transport):>9} {row['var W']:>7.3f}±{row['var W err']:<7.3f} "
                  f"{row['pair acceptance']:>8.3f}±{row['pair acceptance err']:<7.3f} {row['cpu']:>15.2e}", flush=True)
    plain = {r["n_switch"]: r for r in rows if not r["transport"]}
    for r in rows:
        if r["transport"]:
            print(f"# n_switch {r['n_switch']}: transport costs {r['cpu'] / plain[r['n_switch']]['cpu']:.1f}x the "
                  f"plain protocol per protocol, var W x {r['var W'] / plain[r['n_switch']]['var W']:.2f}")
    return rows


if __name__ == "__main__":
    main()

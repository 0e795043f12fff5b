"""What a single-plaquette transport map leaves of one step's work, from exact fields: links against plaquettes.

Why do the transport layers of ``u1_nonequilibrium_transport`` cut the work's variance only about 3x (issue 16,
``docs/flows.md``)? One step of the protocol, without its HMC trajectory: ``--chains`` exact configurations
``x`` at ``--beta-from`` (``sample_exact``), the action raised to ``beta_from + --step``, and the work of one map
``f``, ``W = S_to(f(x)) - S_from(x) - log|det f'(x)|``, whose variance would be 0 for a map that carries the
equilibrium at ``beta_from`` exactly to the one at ``beta_to``. Printed: ``var W`` and ``<W>`` for

- ``plain``: no map (the flow-free protocol's step);
- ``independent``: the von Mises spline applied to every plaquette angle on its own, as if plaquettes were free
  variables (not a map of links; it measures how close the single-plaquette map is to the exact one);
- ``stripes``: the one-link context-free layers of ``VonMisesTransport`` (4 layers, each plaquette active once);
- ``checkerboard``: the four-link layers of ``CheckerboardTransport`` (2 colours, each plaquette active once);

each at ``--fractions`` of the way from ``beta_from`` to ``beta_to`` (1: the whole step). The gap between
``independent`` and the layers is what moving links does to neighbouring plaquettes: a layer that moves an active
plaquette shifts the plaquettes sharing its links by a function of the active one, which correlates them.

    python benchmarks/transport_residual.py                        # 16x16, beta 3 -> 3.06, 2000 fields: ~1 CPU min

float64, one thread.
"""

from __future__ import annotations

import argparse

import torch

from lattice_flows.angles import wrap
from lattice_flows_u1.action import U1Wilson
from lattice_flows_u1.exact_sampling import sample_exact
from lattice_flows_u1.flows.checkerboard_transport import CheckerboardTransport
from lattice_flows_u1.flows.circle_maps import CircularSpline
from lattice_flows_u1.flows.coupling import von_mises_start
from lattice_flows_u1.flows.von_mises_transport import VonMisesTransport
from lattice_flows_u1.geometry import plaquette_angles


def wilson(beta: float, x: torch.Tensor) -> torch.Tensor:
    """``u1_wilson``'s ``S`` ``(B,)`` at ``beta`` of links ``(B, 2, L_0, L_1)``."""
    return U1Wilson(beta=beta)(x)


def independent_work(x: torch.Tensor, beta_from: float, beta_map: float, beta_to: float, n_bins: int) -> torch.Tensor:
    """``W (B,)`` of the von Mises map from ``beta_from`` to ``beta_map`` applied to each plaquette on its own."""
    plaq = wrap(plaquette_angles(x)).flatten(1)
    params = torch.from_numpy(von_mises_start(beta_from, beta_map, n_bins))
    delta, log_slope = CircularSpline(n_bins=n_bins).displacement_plain(plaq, params.view(-1, 1, 1).expand(-1, *plaq.shape))
    moved = plaq + delta
    return (beta_to * (1 - torch.cos(moved)) - beta_from * (1 - torch.cos(plaq)) - log_slope).sum(dim=1)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, default=16)
    p.add_argument("--beta-from", type=float, default=3.0)
    p.add_argument("--step", type=float, nargs="+", default=[0.06, 0.3], help="beta_to - beta_from (0.06: a step of 50 from 3 to 6)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--n-bins", type=int, default=16)
    p.add_argument("--chains", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(args.seed)
    x = sample_exact(args.beta_from, args.chains, (args.shape, args.shape), generator=g, dtype=torch.float64)
    b0 = args.beta_from
    print(f"# {args.shape}x{args.shape}, {args.chains} exact fields at beta {b0:g}, spline of {args.n_bins} bins; var W "
          f"(<W>) of one step with each map")
    rows = []
    for step in args.step:
        b1 = b0 + step
        plain = wilson(b1, x) - wilson(b0, x)
        print(f"step {b0:g} -> {b1:g}: plain var W {float(plain.var()):.3e} (<W> {float(plain.mean()):.4f})")
        for frac in args.fractions:
            bm = b0 + frac * step
            maps = {
                "independent": independent_work(x, b0, bm, b1, args.n_bins),
                # VonMisesTransport's 4 layers take each plaquette half of the way to its beta_to
                "stripes": _work(VonMisesTransport(b0, b0 + 2 * frac * step, n_bins=args.n_bins), x, b0, b1),
                "checkerboard": _work(CheckerboardTransport(b0, bm, n_bins=args.n_bins), x, b0, b1),
            }
            for name, w in maps.items():
                rows.append({"step": step, "fraction": frac, "map": name, "var W": float(w.var()), "mean W": float(w.mean()),
                             "of plain": float(w.var() / plain.var())})
                print(f"  {frac:g} of the way, {name:>12}: var W {float(w.var()):.3e} ({float(w.var() / plain.var()):.3f} of "
                      f"plain), <W> {float(w.mean()):.4f}")
    return rows


def _work(t, x, b0, b1):
    y, logdet = t(x)
    return wilson(b1, y) - wilson(b0, x) - logdet


if __name__ == "__main__":
    main()

"""Checkerboard plaquette layers: each active plaquette moved through all four of its links.

A layer of :mod:`.von_mises_transport` (and of :mod:`.coupling`) moves an active plaquette ``x_P`` by shifting
one of its links, so the other plaquette holding that link moves by the whole ``-(h(x_P) - x_P)``: the
"passive plaquette noise" that limits how far those layers can carry the plaquettes (``docs/flows.md``).
Here a layer of colour ``c`` takes the plaquettes ``P(n)`` with ``n_0 + n_1 = c (mod 2)`` as active; no two
of them share a link, and every link lies in exactly one of them. Each active plaquette moves ``x_P ->
h(x_P)`` by shifting each of its four links by a quarter of ``delta_P = h(x_P) - x_P`` (with the link's sign
in the plaquette), the smallest shift (in the sum of squares) that moves the plaquette by ``delta_P``. Each
passive plaquette then moves by minus a quarter of each of its four active neighbours' ``delta``: the noise
a passive plaquette takes is ``sum delta^2 / 16`` over four neighbours, a quarter of what the one-link
layers give it.

The Jacobian: the four links of an active plaquette move as ``x_l -> x_l + s_l g(x_P) / 4`` with ``x_P = sum
s_l x_l`` and ``g = h - id``, and no link is in two active plaquettes, so the Jacobian is block diagonal with
blocks ``1 + s s^T g'(x_P) / 4`` whose determinant is ``1 + g'(x_P) = h'(x_P)``: ``log|det| = sum log
h'(x_P)`` over the active plaquettes. Plaquettes are gauge invariant and the shifts are functions of them, so
the map is gauge equivariant. Nothing here uses that 2D plaquettes are independent variables; in more
dimensions a colour would be a set of plaquettes with no link in common (then not every link is in one).

:class:`CheckerboardTransport` sets both colours' splines to the single-plaquette von Mises map from
``beta_from`` to ``beta_to`` (:func:`.coupling.von_mises_start`): two layers take every plaquette once
all the way (the one-link layers of :class:`.von_mises_transport.VonMisesTransport` take it half way).

Shapes: links ``(B, 2, L_0, L_1)`` with ``L_0, L_1`` even; ``log|det dx'/dx|`` ``(B,)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lattice_flows.angles import wrap

from ..geometry import plaquette_angles
from .circle_maps import CircularSpline
from .coupling import von_mises_start

__all__ = ["CheckerboardTransport", "checkerboard_mask", "spread_to_links"]


def checkerboard_mask(shape: tuple[int, int], colour: int, *, device=None) -> Tensor:
    """Bool ``(L_0, L_1)``: the plaquettes ``P(n)`` with ``n_0 + n_1 = colour (mod 2)``."""
    n0 = torch.arange(shape[0], device=device).view(-1, 1)
    n1 = torch.arange(shape[1], device=device).view(1, -1)
    return (n0 + n1) % 2 == colour


def spread_to_links(delta: Tensor) -> Tensor:
    """Link shifts ``(B, 2, L_0, L_1)`` that move each plaquette ``P(n)`` with ``delta(n) != 0`` by ``delta(n)``
    through a quarter on each of its links, for ``delta`` ``(B, L_0, L_1)`` nonzero only on one colour.

    With ``x_P(n) = x_0(n) + x_1(n + e_0) - x_0(n + e_1) - x_1(n)``: ``x_0(n)`` gets ``(delta(n) - delta(n -
    e_1)) / 4`` and ``x_1(n)`` gets ``(delta(n - e_0) - delta(n)) / 4``."""
    d0 = delta - torch.roll(delta, 1, dims=2)
    d1 = torch.roll(delta, 1, dims=1) - delta
    return 0.25 * torch.stack((d0, d1), dim=1)


class CheckerboardTransport:
    """Two checkerboard layers (colour 0, then colour 1), each moving its plaquettes through one
    :class:`.circle_maps.CircularSpline` shared by all sites, started as the von Mises map from ``beta_from``
    to ``beta_to``.

    ``__call__(x)``: links ``(B, 2, L_0, L_1)`` -> ``(links, log|det| (B,))``, in the dtype and on the device of
    ``x``. ``_params``: the two colours' raw spline parameters ``(3 n_bins + 1,)`` (float64; trainable)."""

    n_colours = 2

    def __init__(self, beta_from: float, beta_to: float, *, n_bins: int = 16):
        self.beta_from, self.beta_to, self.n_bins = float(beta_from), float(beta_to), int(n_bins)
        start = von_mises_start(self.beta_from, self.beta_to, self.n_bins)
        if not np.isfinite(start).all():
            raise ValueError(
                f"CheckerboardTransport: the starting spline from beta {beta_from:g} to {beta_to:g} with n_bins = "
                f"{n_bins} has bins narrower than float64 resolves; use fewer bins or a smaller step"
            )
        self._params = [torch.from_numpy(start.copy()) for _ in range(self.n_colours)]
        self.circle_map = CircularSpline(n_bins=self.n_bins)
        self._cache: dict = {}

    def _on(self, like: Tensor) -> tuple[list, list]:
        key = (like.dtype, like.device, tuple(like.shape[2:]))
        if key not in self._cache:
            masks = [checkerboard_mask(like.shape[2:], c, device=like.device) for c in range(self.n_colours)]
            self._cache[key] = masks
        params = [p if p.requires_grad else p.to(dtype=like.dtype, device=like.device) for p in self._params]
        return self._cache[key], params

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != 2 or x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(
                f"CheckerboardTransport expects link angles (B, 2, L_0, L_1) with L_0, L_1 even, got {tuple(x.shape)}"
            )
        masks, params = self._on(x)
        logdet = x.new_zeros(x.shape[0])
        for mask, p in zip(masks, params):
            plaq = plaquette_angles(x)  # (B, L_0, L_1), not wrapped: the spline wraps its input
            active = wrap(plaq[:, mask]).T  # (V/2, B)
            delta, log_slope = self.circle_map.displacement_shared(active, p)
            full = plaq.new_zeros(plaq.shape)
            full[:, mask] = delta.T
            x = x + spread_to_links(full)
            logdet = logdet + log_slope.sum(dim=0)
        return wrap(x), logdet

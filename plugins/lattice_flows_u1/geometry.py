"""Lattice geometry of 2D U(1) gauge fields: plaquettes, gauge transformations, wrapping.

A batch of fields is a real tensor of link angles ``x`` of shape ``(B, 2, L_0, L_1)``:
``x[:, mu, n_0, n_1]`` is the angle of the link ``U_mu(n) = exp(i x_mu(n))``, in radians.
Boundaries are periodic. ``shift(t, mu)`` returns ``t(n + e_mu)``. ``wrap`` is
:func:`lattice_flows.angles.wrap`, kept here under its old name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lattice_flows.angles import uniform_angles, wrap

__all__ = ["shift", "plaquette_angles", "wrap", "gauge_transform", "random_gauge_transform"]


def shift(t: Tensor, mu: int, k: int = 1) -> Tensor:
    """``t(n + k e_mu)`` for a site field ``t`` of shape ``(B, L_0, L_1)``, periodic."""
    return torch.roll(t, shifts=-k, dims=1 + mu)


def plaquette_angles(x: Tensor) -> Tensor:
    """Plaquette angles ``x_P(n) = x_0(n) + x_1(n + e_0) - x_0(n + e_1) - x_1(n)``.

    ``x``: ``(B, 2, L_0, L_1)`` link angles. Returns ``(B, L_0, L_1)``, not wrapped.
    """
    x0, x1 = x[:, 0], x[:, 1]
    p = x0 - x1
    p += shift(x1, 0)
    p -= shift(x0, 1)
    return p


def gauge_transform(x: Tensor, a: Tensor) -> Tensor:
    """``x_mu(n) + a(n) - a(n + e_mu)`` for site angles ``a`` of shape ``(B, L_0, L_1)``."""
    return torch.stack([x[:, mu] + a - shift(a, mu) for mu in range(2)], dim=1)


def random_gauge_transform(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` under a gauge transformation with uniform random site angles in ``[-pi, pi)``."""
    return gauge_transform(x, uniform_angles(x[:, 0].shape, generator=generator, dtype=x.dtype, device=x.device))

"""Lattice geometry of 2D U(1) gauge fields: plaquettes, gauge transformations, wrapping.

A batch of fields is a real tensor of link angles ``x`` of shape ``(B, 2, L_0, L_1)``:
``x[:, mu, n_0, n_1]`` is the angle of the link ``U_mu(n) = exp(i x_mu(n))``, in radians.
Boundaries are periodic. ``shift(t, mu)`` returns ``t(n + e_mu)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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


def wrap(theta: Tensor) -> Tensor:
    """Angles folded into ``[-pi, pi)``, same shape."""
    # floor is several times faster than torch.remainder on the CPU; both give [-pi, pi) up to round-off.
    turns = torch.mul(theta, 1 / (2 * math.pi)).add_(0.5).floor_()
    return torch.add(theta, turns, alpha=-2 * math.pi)


def gauge_transform(x: Tensor, a: Tensor) -> Tensor:
    """``x_mu(n) + a(n) - a(n + e_mu)`` for site angles ``a`` of shape ``(B, L_0, L_1)``."""
    return torch.stack([x[:, mu] + a - shift(a, mu) for mu in range(2)], dim=1)


def random_gauge_transform(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` under a gauge transformation with uniform random site angles in ``[-pi, pi)``."""
    a = torch.rand(x[:, 0].shape, generator=generator, device=x.device, dtype=x.dtype)
    return gauge_transform(x, (2 * a - 1) * math.pi)

"""Exact, independent samples of 2D U(1) Wilson gauge theory on a periodic lattice.

The map from link angles to wrapped plaquette angles ``theta`` is a surjective homomorphism of tori onto
``{theta in [-pi, pi)^V : sum_P theta_P = 0 (mod 2 pi)}``, so it carries the Haar measure of the links
to the uniform measure on that set, and ``p(x) ∝ exp(-beta sum_P (1 - cos x_P))`` becomes
``∝ prod_P e^{beta cos theta_P}`` there. Its fibre over a given ``theta`` is one field ``x(theta)`` plus
the flat fields: two holonomies and the gauge orbit, each uniform. Hence the sampler:

1. ``V - 1`` plaquette angles i.i.d. from the von Mises density ``∝ e^{beta cos theta}`` and the last
   one ``theta_V = wrap(-sum of the others)``, kept with probability ``e^{beta (cos theta_V - 1)}``:
   the kept ones have density ``∝ prod_{all V} e^{beta cos theta_P}`` on the constraint set;
2. links in a fixed gauge that reproduce ``theta`` (see ``links_from_plaquettes``), with uniform
   holonomies ``h_0, h_1``;
3. a uniform random gauge transformation.

Every random number comes from the caller's ``torch.Generator``, so a seed fixes the result; on the CPU
it is reproducible bit for bit.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from lattice_flows.angles import uniform_angles

from .geometry import random_gauge_transform, wrap

__all__ = ["sample_exact", "links_from_plaquettes"]


def sample_exact(
    beta: float,
    n_configs: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n_configs`` independent exact samples of ``p(x) ∝ exp(-beta sum_P (1 - cos x_P))``.

    ``beta > 0``; ``shape = (L_0, L_1)``. Returns link angles of shape ``(n_configs, 2, L_0, L_1)``
    in ``[-pi, pi)``, of ``dtype`` (default: torch's default dtype) on ``device`` (default: the
    generator's device), which must be the generator's device type.

    Cost: each plaquette angle takes ``e^beta / I_0(beta) ~ sqrt(2 pi beta)`` uniform proposals and
    each configuration about as many tries, so ``O(V beta)`` random numbers per sample.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if isinstance(n_configs, bool) or not isinstance(n_configs, numbers.Integral) or n_configs < 0:
        raise ValueError(f"n_configs must be a non-negative integer, got {n_configs!r}")
    if not (
        isinstance(shape, (tuple, list))
        and len(shape) == 2
        and all(isinstance(L, numbers.Integral) and not isinstance(L, bool) and L >= 1 for L in shape)
    ):
        raise ValueError(f"shape must be a pair of positive integers (L_0, L_1), got {shape!r}")
    device = generator.device if device is None else torch.device(device)
    if device.type != generator.device.type:
        raise ValueError(f"device {device} does not match the generator's device {generator.device}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    beta, n_configs = float(beta), int(n_configs)
    L0, L1 = int(shape[0]), int(shape[1])
    V = L0 * L1
    factory = dict(generator=generator, dtype=dtype, device=device)

    theta = torch.empty(n_configs, V, dtype=dtype, device=device)
    pending = torch.arange(n_configs, device=device)
    while pending.numel() > 0:
        free = _von_mises(beta, (pending.numel(), V - 1), **factory)
        last = wrap(-free.sum(dim=1, keepdim=True))
        keep = torch.rand(pending.numel(), **factory) < torch.exp(beta * (torch.cos(last[:, 0]) - 1.0))
        theta[pending[keep]] = torch.cat([free[keep], last[keep]], dim=1)
        pending = pending[~keep]

    holonomies = uniform_angles((n_configs, 2), **factory)
    x = links_from_plaquettes(theta.reshape(n_configs, L0, L1), holonomies)
    return wrap(random_gauge_transform(x, generator=generator))


def links_from_plaquettes(theta: Tensor, holonomies: Tensor) -> Tensor:
    """Link angles ``(B, 2, L_0, L_1)`` whose plaquette angles equal ``theta`` modulo ``2 pi``.

    ``theta``: ``(B, L_0, L_1)`` with ``sum theta = 0 (mod 2 pi)`` per configuration (otherwise the
    plaquette at ``(L_0 - 1, L_1 - 1)`` absorbs the mismatch); ``holonomies``: ``(B, 2)``, the sums of
    ``x_0`` along the row ``n_1 = 0`` and of ``x_1`` along the column ``n_0 = 0``. Gauge: ``x_0 = 0``
    except on the last column ``n_0 = L_0 - 1``; ``x_1(0, n_1) = h_1 [n_1 = L_1 - 1]``. Then

    - ``x_1(n_0 + 1, n_1) = x_1(n_0, n_1) + theta(n_0, n_1)`` fixes the plaquettes with ``n_0 < L_0 - 1``;
    - ``x_0(L_0 - 1, n_1 + 1) = x_0(L_0 - 1, n_1) + x_1(0, n_1) - x_1(L_0 - 1, n_1) - theta(L_0 - 1, n_1)``
      from ``x_0(L_0 - 1, 0) = h_0`` fixes the last column; its final plaquette closes because the
      increments add up to ``-sum theta``.

    Not wrapped; magnitudes grow like ``(L_0 + L_1) pi``.
    """
    B, L0, L1 = theta.shape
    h0, h1 = holonomies[:, 0], holonomies[:, 1]
    x1_first = torch.zeros(B, L1, dtype=theta.dtype, device=theta.device)
    x1_first[:, -1] = h1
    x1 = torch.cat([x1_first[:, None], x1_first[:, None] + torch.cumsum(theta[:, :-1], dim=1)], dim=1)
    step = x1[:, 0, :-1] - x1[:, -1, :-1] - theta[:, -1, :-1]  # (B, L_1 - 1)
    x0_last = torch.cat([h0[:, None], h0[:, None] + torch.cumsum(step, dim=1)], dim=1)  # (B, L_1)
    x0 = torch.zeros_like(theta)
    x0[:, -1] = x0_last
    return torch.stack([x0, x1], dim=1)


def _von_mises(beta: float, shape: tuple[int, ...], *, generator, dtype, device) -> Tensor:
    """I.i.d. angles in ``[-pi, pi)`` with density ``∝ e^{beta cos theta}``, of the given shape.

    Rejection from the uniform proposal with acceptance ``e^{beta (cos theta - 1)}``; only the rejected
    entries are redrawn. Mean acceptance ``I_0(beta) e^{-beta}``, about ``1 / sqrt(2 pi beta)``.
    """
    out = torch.empty(shape, dtype=dtype, device=device).reshape(-1)
    pending = torch.arange(out.numel(), device=device)
    while pending.numel() > 0:
        factory = dict(generator=generator, dtype=dtype, device=device)
        proposal = uniform_angles((pending.numel(),), **factory)
        u = torch.rand(pending.numel(), **factory)
        accept = u < torch.exp(beta * (torch.cos(proposal) - 1.0))
        out[pending[accept]] = proposal[accept]
        pending = pending[~accept]
    return out.reshape(shape)

"""Exact expectation values of the free field (no quartic term) on a finite periodic lattice.

With ``b = 0`` the action ``S = sum_n [ -c sum_mu x(n) x(n + mu) + a x(n)^2 ]`` is the quadratic form
``S = (1/2) x^T H x`` with ``H = 2 a - c sum_mu (T_mu + T_mu^-1)`` (``T_mu`` the periodic shift). The
Fourier modes ``x_p = sum_n e^{-i p n} x(n)``, ``p_mu = 2 pi k_mu / L_mu``, diagonalise it:

    S = (1 / 2V) sum_p K(p) |x_p|^2,    K(p) = 2 a - 2 c sum_mu cos p_mu,

so ``<x(n) x(m)> = H^-1 = (1/V) sum_p e^{i p (n - m)} / K(p)`` and ``<|x_p|^2> = V / K(p)``. In the
hopping form (``c = 2 kappa``, ``a = 1``) ``K(p) = 2 - 4 kappa sum_mu cos p_mu``, positive for every
``p`` when ``|kappa| < 1/(2D)``; in the standard form ``K(p) = m2 + sum_mu (2 sin(p_mu / 2))^2``. Hence

- ``<x(n)^2> = (1/V) sum_p 1 / K(p)``;
- ``M = (1/V) sum_n x(n) = x_0 / V`` is normal with ``<M^2> = 1 / (V K(0))``: the susceptibility
  ``chi = V <M^2> = 1 / K(0)`` and ``<|M|> = sqrt(2 <M^2> / pi)``;
- the zero-momentum two-point function along axis 0 (:class:`~lattice_flows_phi4.observables.TwoPoint`),
  ``C(t) = sum_{n_1, ...} <x(t, n_1, ...) x(0)> = (1/L_0) sum_{p_0} cos(p_0 t) / K(p_0, 0, ..., 0)``.

Every function takes the action (:class:`~lattice_flows_phi4.action.Phi4`, either form) and the
lattice shape, and raises ``ValueError`` for an interacting action or one unbounded below.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .action import Phi4

__all__ = ["inverse_propagator", "phi_squared", "susceptibility", "abs_magnetization", "two_point"]


def inverse_propagator(action: Phi4, lattice_shape: Sequence[int]) -> np.ndarray:
    """``K(p)`` on the lattice momenta, float64 of shape ``lattice_shape`` (index ``k_mu`` for ``p_mu = 2 pi k_mu / L_mu``)."""
    shape = tuple(lattice_shape)
    c, a, b = action.coefficients(len(shape))
    if b != 0:
        raise ValueError(f"exact values are known only for the free field (no quartic term), got {action.to_spec()}")
    K = np.full(shape, 2.0 * a)
    for mu, L in enumerate(shape):
        cos = np.cos(2 * np.pi * np.arange(L) / L)
        K = K - 2.0 * c * cos.reshape([L if nu == mu else 1 for nu in range(len(shape))])
    if not K.min() > 0:
        raise ValueError(f"the free action {action.to_spec()} is unbounded below on {list(shape)}: min K(p) = {K.min():.6g}")
    return K


def phi_squared(action: Phi4, lattice_shape: Sequence[int]) -> float:
    """``<x(n)^2> = (1/V) sum_p 1 / K(p)``."""
    return float(np.mean(1.0 / inverse_propagator(action, lattice_shape)))


def susceptibility(action: Phi4, lattice_shape: Sequence[int]) -> float:
    """``chi = V <M^2> = 1 / K(0)``."""
    return float(1.0 / inverse_propagator(action, lattice_shape).flat[0])


def abs_magnetization(action: Phi4, lattice_shape: Sequence[int]) -> float:
    """``<|M|> = sqrt(2 <M^2> / pi)`` with ``<M^2> = chi / V`` (``M`` is normal with mean 0)."""
    return math.sqrt(2 * susceptibility(action, lattice_shape) / (math.pi * math.prod(lattice_shape)))


def two_point(action: Phi4, lattice_shape: Sequence[int], t: int) -> float:
    """``C(t) = (1/L_0) sum_{p_0} cos(p_0 t) / K(p_0, 0, ..., 0)``."""
    K = inverse_propagator(action, lattice_shape)
    L0 = K.shape[0]
    K0 = K[(slice(None),) + (0,) * (K.ndim - 1)]
    return float(np.mean(np.cos(2 * np.pi * np.arange(L0) * t / L0) / K0))

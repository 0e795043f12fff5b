"""Observables of 2D U(1) gauge fields, each with its exact expectation where one is known.

Every observable maps link angles ``(B, 2, L_0, L_1)`` to one value per configuration, ``(B,)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, Observable
from lattice_flows.errors import ParameterError
from lattice_flows.params import injected, integer

from . import exact
from .action import U1Wilson
from .geometry import plaquette_angles, shift, wrap

__all__ = ["Plaquette", "TopologicalCharge", "ActionDensity", "WilsonLoop", "topological_charge_real"]


class _U1Observable(Observable):
    theory: ClassVar[str] = "u1"

    def _wilson_beta(self) -> float | None:
        """``beta`` if the injected action is the Wilson action (whose exact solution we know)."""
        action = getattr(self, "action", None)
        return action.beta if isinstance(action, U1Wilson) else None


@attrs.frozen(kw_only=True)
class Plaquette(_U1Observable):
    """Mean plaquette ``(1/V) sum_P cos x_P`` per configuration."""

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cos(plaquette_angles(x)).mean(dim=(1, 2))

    def exact(self) -> dict[int, float]:
        beta = self._wilson_beta()
        return {} if beta is None else {1: exact.plaquette(beta, self.lattice_shape)}


def topological_charge_real(x: Tensor) -> Tensor:
    """``(1/2pi) sum_P wrap(x_P)`` before rounding, ``(B,)``: an integer up to round-off."""
    return wrap(plaquette_angles(x)).sum(dim=(1, 2)) / (2 * math.pi)


@attrs.frozen(kw_only=True)
class TopologicalCharge(_U1Observable):
    """Topological charge ``Q = (1/2pi) sum_P wrap(x_P)``, rounded to the integer it is (int64, ``(B,)``).

    The summary also reports ``<Q^2>``; the susceptibility is ``<Q^2>/V``.
    """

    moments: ClassVar[tuple[int, ...]] = (1, 2)
    slow_mode: ClassVar[bool] = True  # its tau_int grows fastest toward the continuum (topological freezing)

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return torch.round(topological_charge_real(x)).to(torch.int64)

    def exact(self) -> dict[int, float]:
        beta = self._wilson_beta()
        return {} if beta is None else {1: 0.0, 2: exact.topological_charge_squared(beta, self.lattice_shape)}

    def exact_distribution(self) -> dict[int, float]:
        """Exact ``P(Q = q)`` for the Wilson action (``q`` with ``P > 1e-15``, increasing); empty otherwise."""
        beta = self._wilson_beta()
        return {} if beta is None else exact.topological_charge_distribution(beta, self.lattice_shape)


@attrs.frozen(kw_only=True)
class ActionDensity(_U1Observable):
    """Action per site ``S / V`` of the simulated action, ``(B,)``."""

    evaluates_action: ClassVar[bool] = True

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return self.action(x) / math.prod(self.lattice_shape)

    def exact(self) -> dict[int, float]:
        beta = self._wilson_beta()
        return {} if beta is None else {1: exact.action_density(beta, self.lattice_shape)}


@attrs.frozen(kw_only=True)
class WilsonLoop(_U1Observable):
    """Real part of the ``R x T`` rectangular Wilson loop averaged over the lattice, ``(B,)``.

    ``R`` links along direction 0 and ``T`` along direction 1; the loop angle is the sum of the
    ``R T`` enclosed plaquette angles, so ``R = T = 1`` is the plaquette.
    """

    example_params: ClassVar[dict] = {"R": 2, "T": 1}

    R: int = integer(help="extent of the loop along direction 0, in lattice units", ge=1)
    T: int = integer(help="extent of the loop along direction 1, in lattice units", ge=1)
    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __attrs_post_init__(self):
        L0, L1 = self.lattice_shape
        if self.R > L0:
            raise ParameterError("R", f"expected at most L_0 = {L0}, got {self.R}")
        if self.T > L1:
            raise ParameterError("T", f"expected at most L_1 = {L1}, got {self.T}")
        if self.R * self.T >= L0 * L1:
            raise ParameterError("T", f"the loop must enclose fewer than V = {L0 * L1} plaquettes, got R*T = {self.R * self.T}")

    def __call__(self, x: Tensor) -> Tensor:
        x0, x1 = x[:, 0], x[:, 1]
        bottom = sum(shift(x0, 0, k) for k in range(self.R))  # n -> n + R e_0
        right = sum(shift(x1, 1, k) for k in range(self.T))  # n -> n + T e_1
        angle = bottom + shift(right, 0, self.R) - shift(bottom, 1, self.T) - right
        return torch.cos(angle).mean(dim=(1, 2))

    def exact(self) -> dict[int, float]:
        beta = self._wilson_beta()
        return {} if beta is None else {1: exact.wilson_loop(beta, self.lattice_shape, self.R, self.T)}

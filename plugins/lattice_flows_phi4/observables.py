"""Observables of the real scalar field, each with its exact free-field value (no quartic term).

Every observable maps fields ``(B, L_0, ..., L_{D-1})`` to one value per configuration, ``(B,)``.
``M = (1/V) sum_n x(n)`` is the magnetization; ``x -> -x`` flips its sign, so ``<M> = 0`` exactly on
a finite lattice at every coupling (a chain that does not tunnel between the signs shows a large pull).
The exact values (:mod:`.exact`) hold for the action as it is evaluated, in its own field
normalisation (hopping or standard form).
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, Observable
from lattice_flows.errors import ParameterError
from lattice_flows.params import injected, integer

from . import exact
from .action import Phi4

__all__ = ["Magnetization", "AbsMagnetization", "Susceptibility", "PhiSquared", "TwoPoint"]


class _Phi4Observable(Observable):
    theory: ClassVar[str] = "phi4"

    def _free(self) -> Phi4 | None:
        """The injected action if it is a phi4 action without a quartic term (whose exact values we know)."""
        action = getattr(self, "action", None)
        if isinstance(action, Phi4) and action.coefficients(len(self.lattice_shape)).quartic == 0:
            return action
        return None


def magnetization(x: Tensor) -> Tensor:
    """``M = (1/V) sum_n x(n)``, ``(B, ...) -> (B,)``."""
    return x.flatten(1).mean(1)


@attrs.frozen(kw_only=True)
class Magnetization(_Phi4Observable):
    """Magnetization ``M = (1/V) sum_n x(n)``; odd under ``x -> -x``, so ``<M> = 0`` exactly."""

    invariant: ClassVar[bool] = False

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return magnetization(x)

    def exact(self) -> dict[int, float]:
        return {1: 0.0}


@attrs.frozen(kw_only=True)
class AbsMagnetization(_Phi4Observable):
    """``|M|``, the order parameter on a finite lattice (``<M>`` itself vanishes)."""

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return magnetization(x).abs()

    def exact(self) -> dict[int, float]:
        free = self._free()
        return {} if free is None else {1: exact.abs_magnetization(free, self.lattice_shape)}


@attrs.frozen(kw_only=True)
class Susceptibility(_Phi4Observable):
    """``chi = V M^2`` per configuration, so ``<chi> = V <M^2>`` (the connected susceptibility is
    ``V (<M^2> - <|M|>^2)``, from the means of this and ``abs_magnetization``)."""

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return x[0].numel() * magnetization(x).square()

    def exact(self) -> dict[int, float]:
        free = self._free()
        return {} if free is None else {1: exact.susceptibility(free, self.lattice_shape)}


@attrs.frozen(kw_only=True)
class PhiSquared(_Phi4Observable):
    """``(1/V) sum_n x(n)^2`` per configuration, so ``<phi_squared> = <x(0)^2>``."""

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, x: Tensor) -> Tensor:
        return x.square().flatten(1).mean(1)

    def exact(self) -> dict[int, float]:
        free = self._free()
        return {} if free is None else {1: exact.phi_squared(free, self.lattice_shape)}


@attrs.frozen(kw_only=True)
class TwoPoint(_Phi4Observable):
    """Zero-momentum two-point function at time separation ``t`` along axis 0 ("time" slices ``n_0``):

    ``C(t) = (1/V) sum_{n_0} Sigma(n_0 + t) Sigma(n_0)`` with the slice sums ``Sigma(n_0) = sum_{n_1, ...} x(n)``,
    per configuration; its mean is ``sum_{n_1, ...} <x(t, n_1, ...) x(0)>``. Periodic in ``t`` with period
    ``L_0``, and ``sum_t C(t) = V M^2`` (the ``susceptibility``). ``C(t) ~ cosh(m (t - L_0/2))`` for the
    mass gap ``m``.
    """

    example_params: ClassVar[dict] = {"t": 1}

    t: int = integer(help="separation of the two time slices along axis 0, in lattice units (0 <= t < L_0)", ge=0)
    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __attrs_post_init__(self):
        if self.t >= self.lattice_shape[0]:
            raise ParameterError("t", f"expected t < L_0 = {self.lattice_shape[0]}, got {self.t}")

    def __call__(self, x: Tensor) -> Tensor:
        slices = x.flatten(2).sum(2) if x.dim() > 2 else x  # (B, L_0)
        V = x[0].numel()
        return (slices * torch.roll(slices, -self.t, 1)).sum(1) / V

    def exact(self) -> dict[int, float]:
        free = self._free()
        return {} if free is None else {1: exact.two_point(free, self.lattice_shape, self.t)}

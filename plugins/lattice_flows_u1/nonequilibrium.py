"""``u1_nonequilibrium_transport``: non-equilibrium MCMC whose protocol moves the plaquettes at every step.

The ``nonequilibrium`` sampler (:mod:`lattice_flows_hmc.nonequilibrium`) from a ``u1_wilson`` prior at
``beta_p`` to the ``u1_wilson`` target at ``beta``, with a deterministic layer in each step: where the action
changes from ``beta_{k-1}`` to ``beta_k`` (``beta_k = beta_p + (beta - beta_p) k / n_switch``), the fields go
through ``transport_layers`` context-free coupling layers (:class:`.flows.von_mises_transport.VonMisesTransport`)
started as the single-plaquette von Mises map from ``beta_{k-1}`` toward
``beta_{k-1} + transport_reach (beta_k - beta_{k-1})``, and the work gains
``S_k(f(x)) - S_{k-1}(x) - log|det df/dx|`` (a stochastic normalizing flow, arXiv:2201.08862, whose
deterministic layers are gauge-equivariant plaquette coupling layers with their von Mises start, untrained).
The weight stays exact for any map, so the chain is exact whatever the layers do; what they change is the
variance of the work, and so the acceptance at a given ``n_switch``.

Measured (``benchmarks/nonequilibrium_transport.py``, 16x16, beta 3 -> 6): with 4 layers and reach 1 (each
plaquette moved to the von Mises map's midpoint), the work's variance falls to about a third of the plain
protocol's at the same ``n_switch``; moving all the way (reach 2) helps less, because every layer also moves
the passive plaquette holding the active link the other way. The figures are in ``docs/flows.md``.

Lattice sizes must be multiples of 4 (the coupling masks).

``u1_nonequilibrium_checkerboard`` is the same protocol with the two four-link checkerboard layers of
:class:`.flows.checkerboard_transport.CheckerboardTransport` in each step instead: each plaquette is moved once,
through all four of its links (a quarter of its move on each), all the way to ``beta_{k-1} + transport_reach
(beta_k - beta_{k-1})`` (so its ``transport_reach = 0.5``, the default, moves each plaquette as far as the
one-link layers' reach 1). At the same work variance it costs about two thirds of the one-link layers per step
(two layers instead of four). Lattice sizes must be even.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import attrs
from torch import Tensor

from lattice_flows import Action
from lattice_flows.errors import SpecError
from lattice_flows.params import integer, real
from lattice_flows_hmc.nonequilibrium import InterpolatedAction, NonEquilibrium

from .action import U1Wilson
from .flows import masks
from .flows.checkerboard_transport import CheckerboardTransport
from .flows.von_mises_transport import VonMisesTransport

__all__ = ["U1NonEquilibriumCheckerboard", "U1NonEquilibriumTransport"]


@functools.lru_cache(maxsize=4096)
def _transport(beta_from: float, beta_to: float, n_layers: int, n_bins: int) -> VonMisesTransport:
    return VonMisesTransport(beta_from, beta_to, n_layers=n_layers, n_bins=n_bins)


@functools.lru_cache(maxsize=4096)
def _checkerboard(beta_from: float, beta_to: float, n_bins: int) -> CheckerboardTransport:
    return CheckerboardTransport(beta_from, beta_to, n_bins=n_bins)


@attrs.frozen(kw_only=True)
class _TransportProtocol(NonEquilibrium):
    """What both transport samplers share: the Wilson prior and target, the lattice check, the switch through
    :meth:`transport` with its Jacobian in the work, each step's betas, the splines' bins. A subclass sets
    ``transport_reach``, :meth:`transport` and :meth:`_check_lattice`."""

    theories = ("u1",)  # and of those only u1_wilson (applies_to)
    example_params = {"prior": {"name": "u1_wilson", "beta": 0.2}, "n_switch": 3,
                      "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 5}}
    _name = "?"

    n_bins: int = integer(help="bins of each layer's spline", default=16, ge=2)

    @classmethod
    def _check_lattice(cls, shape: tuple, what: str) -> None:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], *, name: str, path: str, context: Mapping[str, Any]):
        shape = tuple(context.get("lattice_shape") or ())
        if shape:
            try:
                cls._check_lattice(shape, f"{name} (its transport layers)")
            except ValueError as exc:
                raise SpecError(f"{path}: {exc}") from None
        return super().from_spec(params, name=name, path=path, context=context)

    @classmethod
    def applies_to(cls, action) -> bool:
        """Only the Wilson action ``u1_wilson`` (the transport maps are its single-plaquette maps)."""
        kind = action if isinstance(action, type) else type(action)
        return issubclass(kind, U1Wilson) and kind.refresh is Action.refresh

    def check_action(self, action: Action) -> None:
        super().check_action(action)
        if not self.applies_to(action):
            raise ValueError(f"{self._name} samples only the u1_wilson action, got {type(action).__name__}")
        if self.prior is None or not self.applies_to(self.prior):
            got = "none" if self.prior is None else type(self.prior).__name__
            raise ValueError(f"{self._name}: the prior must be a u1_wilson action (at a smaller beta), got {got}")

    def switch(self, k: int, x: Tensor, work: Tensor, current: InterpolatedAction, s_previous: Tensor):
        x1, logdet = self.transport(*self.step_betas(k, current))(x)
        return current.target.normalize(x1), work + current(x1) - s_previous - logdet

    def transport(self, beta_from: float, beta_to: float):
        """The map of one step: links ``(B, 2, L_0, L_1)`` -> ``(links, log|det| (B,))``, at its von Mises start from
        ``beta_from`` toward ``beta_to`` (built once per pair, then cached)."""
        raise NotImplementedError

    def step_betas(self, k: int, current: InterpolatedAction) -> tuple[float, float]:
        """``(beta_from, beta_to)`` of step ``k``'s map: from ``beta_{k-1}`` toward ``beta_{k-1} + transport_reach
        (beta_k - beta_{k-1})`` (``current``: any :class:`InterpolatedAction` of this protocol's prior and target)."""
        beta_from = self._beta(k - 1, current)
        return beta_from, beta_from + self.transport_reach * (self._beta(k, current) - beta_from)

    def _beta(self, k: int, current: InterpolatedAction) -> float:
        lam = k / self.n_switch
        return (1.0 - lam) * float(current.prior.beta) + lam * float(current.target.beta)


@attrs.frozen(kw_only=True)
class U1NonEquilibriumTransport(_TransportProtocol):
    """``nonequilibrium`` from a ``u1_wilson`` prior to a ``u1_wilson`` target with von Mises transport layers
    between the steps; see the module docstring."""

    _name = "u1_nonequilibrium_transport"

    transport_layers: int = integer(
        help="context-free coupling layers per step (4: every plaquette active once, in direction 0; 8: "
        "also in direction 1)", default=4, ge=1, le=8,
    )
    transport_reach: float = real(
        help="the layers start as the von Mises map from beta_{k-1} to beta_{k-1} + reach (beta_k - beta_{k-1}); "
        "4 layers go half of that way (reach 1: to the midpoint of the step, the best measured)",
        default=1.0, ge=0.0, le=10.0,
    )

    @classmethod
    def _check_lattice(cls, shape: tuple, what: str) -> None:
        masks.check_shape(shape, what)

    def transport(self, beta_from: float, beta_to: float):
        """The map of one step: links ``(B, 2, L_0, L_1)`` -> ``(links, log|det| (B,))``, the von Mises start from
        ``beta_from`` toward ``beta_to`` (built once per pair, then cached). A subclass may return another map
        (``benchmarks/nonequilibrium_transport.py`` puts ``u1_plaquette_coupling`` layers here)."""
        return _transport(beta_from, beta_to, self.transport_layers, self.n_bins)


@attrs.frozen(kw_only=True)
class U1NonEquilibriumCheckerboard(_TransportProtocol):
    """``u1_nonequilibrium_transport`` with the two four-link checkerboard layers in each step; see the module
    docstring."""

    _name = "u1_nonequilibrium_checkerboard"

    transport_reach: float = real(
        help="each step's two layers move every plaquette once, all the way from beta_{k-1} to beta_{k-1} + reach "
        "(beta_k - beta_{k-1}) (0.5: to the midpoint of the step, the best measured; the one-link layers' reach 1)",
        default=0.5, ge=0.0, le=10.0,
    )

    @classmethod
    def _check_lattice(cls, shape: tuple, what: str) -> None:
        masks.check_shape(shape, what, multiple=2)

    def transport(self, beta_from: float, beta_to: float):
        """The map of one step: :class:`.flows.checkerboard_transport.CheckerboardTransport` at its von Mises start
        from ``beta_from`` to ``beta_to`` (built once per pair, then cached)."""
        return _checkerboard(beta_from, beta_to, self.n_bins)

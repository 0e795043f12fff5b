"""The phase space of molecular dynamics: how momenta are drawn, what they cost, and how they move a field.

HMC integrates Hamilton's equations for ``H(x, p) = K(p) + S(x)``. What ``p`` is and how it moves ``x``
depends on the manifold the field lives on, so the theory supplies it (:attr:`Action.phase_space`) and
every integrator and sampler goes through it:

- a flat space (real fields, angles): ``p ~ N(0, 1)`` of the field's shape, ``K = sum p^2 / 2``,
  ``x <- x + eps p`` (:class:`FlatPhaseSpace`, the default);
- a mass matrix: ``p ~ N(0, M)``, ``K = p M^-1 p / 2``, ``x <- x + eps M^-1 p``;
- a group manifold: ``p`` in the Lie algebra, ``K = |p|^2 / 2``, ``U <- exp(eps p) U``; the force is
  then the derivative of ``S`` along the algebra's generators (the action's ``force`` gives it in
  the same coordinates as ``p``).

Shapes: fields ``x`` are ``(B, *field_shape)``; momenta ``p`` are ``(B, *momentum_shape)``, which is the
field shape for a flat space and for instance ``(B, n, 3)`` for ``n`` SU(2) matrices; ``K`` is ``(B,)``.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

__all__ = ["PhaseSpace", "FlatPhaseSpace", "FLAT"]


class PhaseSpace(abc.ABC):
    """Momenta, kinetic energy and the position update of one kind of field (see the module docstring).

    ``update_position`` may work in place on ``x`` (the integrators hand it their private copy) and
    returns the updated field; it must be exactly reversible: ``update_position(update_position(x, p,
    eps), p, -eps)`` is ``x`` up to rounding, which makes every symmetric integrator reversible.
    """

    @abc.abstractmethod
    def sample_momenta(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Momenta for the fields ``x`` drawn from ``exp(-K(p))``, on ``x``'s device and dtype."""

    @abc.abstractmethod
    def kinetic_energy(self, p: Tensor) -> Tensor:
        """``K(p)`` per configuration, ``(B,)``."""

    @abc.abstractmethod
    def update_position(self, x: Tensor, p: Tensor, eps: float) -> Tensor:
        """``x`` moved along ``p`` for the time ``eps``: ``x + eps dK/dp`` on a flat space."""


class FlatPhaseSpace(PhaseSpace):
    """Unit masses on a flat space: ``p ~ N(0, 1)``, ``K = sum p^2 / 2``, ``x <- x + eps p`` (in place).

    >>> x = torch.zeros(2, 3, dtype=torch.float64)
    >>> p = FLAT.sample_momenta(x, torch.Generator().manual_seed(0))
    >>> p.shape, p.dtype
    (torch.Size([2, 3]), torch.float64)
    >>> FLAT.kinetic_energy(torch.ones(2, 3))
    tensor([1.5000, 1.5000])
    """

    def sample_momenta(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def kinetic_energy(self, p: Tensor) -> Tensor:
        return 0.5 * p.square().flatten(1).sum(dim=1)

    def update_position(self, x: Tensor, p: Tensor, eps: float) -> Tensor:
        return x.add_(p, alpha=eps)

    def __repr__(self) -> str:
        return "FLAT"


#: The phase space of every action that does not say otherwise.
FLAT = FlatPhaseSpace()

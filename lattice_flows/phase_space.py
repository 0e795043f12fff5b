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

__all__ = ["PhaseSpace", "FlatPhaseSpace", "FLAT", "DiagonalMass"]


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

    def gradient_to_force(self, x: Tensor, grad: Tensor) -> Tensor:
        """The force in momentum coordinates from the gradient ``dS/dx`` of the stored field ``x`` (what
        autograd gives, same shape as ``x``): the identity on a flat space (the default); on a group the
        derivatives along the generators, ``F_a = <grad, T_a x>``. Used by the autograd forces
        (``Action.force``, FTHMC's latent force)."""
        return grad


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


class DiagonalMass(PhaseSpace):
    """A flat space with a diagonal mass matrix: ``p ~ N(0, m)``, ``K = sum p^2 / (2 m)``, ``x <- x + eps p / m``.

    ``masses``: a positive tensor that broadcasts against one field, ``field_shape`` or a suffix of it (a
    scalar gives every component the same mass); moved to the fields' device and dtype as they come. With
    masses ``m_i`` a Gaussian ``S = x_i^2 / (2 sigma_i^2)`` has the frequencies ``1 / (sigma_i sqrt(m_i))``, so
    ``m_i = 1 / sigma_i^2`` gives every mode the same period.

    >>> ps = DiagonalMass(torch.tensor([1.0, 4.0]))
    >>> ps.kinetic_energy(torch.tensor([[2.0, 2.0]]))
    tensor([2.5000])
    >>> ps.update_position(torch.zeros(1, 2), torch.tensor([[2.0, 2.0]]), 0.5)
    tensor([[1.0000, 0.2500]])
    """

    def __init__(self, masses):
        masses = torch.as_tensor(masses)
        if not bool(torch.all(masses > 0)) or not bool(torch.all(torch.isfinite(masses))):
            raise ValueError(f"DiagonalMass: expected finite positive masses, got {masses.tolist()!r}")
        self.masses = masses

    def _m(self, like: Tensor) -> Tensor:
        return self.masses.to(device=like.device, dtype=like.dtype)

    def sample_momenta(self, x: Tensor, generator: torch.Generator) -> Tensor:
        eta = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return eta * self._m(x).sqrt()

    def kinetic_energy(self, p: Tensor) -> Tensor:
        return 0.5 * (p.square() / self._m(p)).flatten(1).sum(dim=1)

    def update_position(self, x: Tensor, p: Tensor, eps: float) -> Tensor:
        return x.add_(p / self._m(p), alpha=eps)

    def __repr__(self) -> str:
        return f"DiagonalMass({self.masses.tolist()!r})"

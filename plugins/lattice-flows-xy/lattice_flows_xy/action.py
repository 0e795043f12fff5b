"""The XY (O(2)) model: one angle per site of a periodic lattice, ``S = -beta sum_{n, mu} cos(theta_n - theta_{n + mu})``."""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor

from lattice_flows import Action
from lattice_flows.angles import uniform_angles, uniform_log_prob, wrap
from lattice_flows.params import real

__all__ = ["XY", "wrap", "link_differences"]


def link_differences(theta: Tensor, mu: int) -> Tensor:
    """``theta_n - theta_{n + mu}`` (not wrapped) for fields ``(B, L_0, ..., L_{D-1})``, same shape; periodic."""
    return theta - torch.roll(theta, -1, dims=1 + mu)


@attrs.frozen(kw_only=True)
class XY(Action):
    """The XY model ``S = -beta sum_n sum_mu cos(theta_n - theta_{n + mu})`` on a periodic lattice.

    Fields: site angles ``theta`` of shape ``(B, L_0, L_1)`` (or ``(B, L_0, L_1, L_2)`` in 3D), in
    radians; ``S`` is dimensionless, shape ``(B,)``. ``beta = J / T`` in units of the coupling ``J``.
    The symmetries are the global rotation ``theta -> theta + c`` and the lattice translations
    (and reflections, not used here). In 2D the model has a Berezinskii-Kosterlitz-Thouless
    transition at ``beta_c = 1.1199(1)`` (Hasenbusch, J. Phys. A 38 (2005) 5869).
    """

    theory: ClassVar[str] = "xy"
    dimensions: ClassVar[tuple[int, ...]] = (2, 3)
    example_params: ClassVar[dict] = {"beta": 0.8}
    period: ClassVar[float] = 2 * math.pi  # angles: the contract kit checks S(theta + 2 pi k) = S(theta)

    beta: float = real(help="inverse temperature beta = J / T (> 0)", gt=0.0)

    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        if len(lattice_shape) not in self.dimensions:
            raise ValueError(f"xy needs a lattice of 2 or 3 dimensions, got {list(lattice_shape)}")
        if min(lattice_shape) < 1:
            raise ValueError(f"expected positive lattice sizes, got {list(lattice_shape)}")
        return tuple(lattice_shape)

    def __call__(self, theta: Tensor) -> Tensor:
        cosines = sum(torch.cos(link_differences(theta, mu)) for mu in range(theta.dim() - 1))
        return -self.beta * cosines.flatten(1).sum(dim=1)

    def force(self, theta: Tensor) -> Tensor:
        """``dS/dtheta_n = beta sum_mu [sin(theta_n - theta_{n+mu}) - sin(theta_{n-mu} - theta_n)]``."""
        force = torch.zeros_like(theta)
        for mu in range(theta.dim() - 1):
            s = torch.sin(link_differences(theta, mu))  # s_mu(n); the link n - mu -> n gives -s_mu(n - mu)
            force += s - torch.roll(s, 1, dims=1 + mu)
        return force.mul_(self.beta)

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device) -> Tensor:
        """Uniform angles in ``[-pi, pi)`` (the ``beta = 0`` distribution), shape ``(n, *lattice_shape)``."""
        return uniform_angles((n, *self.field_shape(lattice_shape)), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, theta: Tensor) -> Tensor:
        """Uniform density ``(2 pi)^(-V)`` on ``[-pi, pi)^V``, ``(B,)``."""
        return uniform_log_prob(theta)

    def normalize(self, theta: Tensor) -> Tensor:
        return wrap(theta)

    def random_symmetry(self, theta: Tensor, generator: torch.Generator) -> Tensor:
        """Each configuration rotated by its own uniform angle ``c`` in ``[-pi, pi)`` and translated by
        its own uniformly drawn shift."""
        batch, shape = theta.shape[0], theta.shape[1:]
        c = uniform_angles((batch,), generator=generator, dtype=theta.dtype, device=theta.device)
        shifts = [torch.randint(0, L, (batch,), generator=generator, device=theta.device).tolist() for L in shape]
        dims = tuple(range(len(shape)))
        moved = [torch.roll(theta[b], tuple(s[b] for s in shifts), dims=dims) for b in range(batch)]
        return torch.stack(moved) + c.view(batch, *([1] * len(shape)))

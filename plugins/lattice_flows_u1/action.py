"""The U(1) Wilson gauge action in two dimensions."""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor

from lattice_flows import Action
from lattice_flows.angles import uniform_angles, uniform_log_prob
from lattice_flows.params import real

from .geometry import plaquette_angles, random_gauge_transform, wrap

__all__ = ["U1LinkFields", "U1Wilson"]


class U1LinkFields:
    """What every 2D U(1) gauge action on link angles ``(B, 2, L_0, L_1)`` shares: the Haar prior, the wrap
    into ``[-pi, pi)`` and random gauge transformations. A mixin for :class:`~lattice_flows.Action` subclasses
    that define ``field_shape``."""

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device) -> Tensor:
        """Haar-random links: angles uniform in ``[-pi, pi)``, shape ``(n, 2, L_0, L_1)``."""
        return uniform_angles((n, *self.field_shape(lattice_shape)), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Uniform density ``(2 pi)^(-2V)`` on ``[-pi, pi)^(2V)``, ``(B,)``."""
        return uniform_log_prob(x)

    def normalize(self, x: Tensor) -> Tensor:
        return wrap(x)

    def random_symmetry(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return random_gauge_transform(x, generator)


@attrs.frozen(kw_only=True)
class U1Wilson(U1LinkFields, Action):
    """``S(x) = beta * sum_P (1 - cos x_P)`` on a periodic ``L_0 x L_1`` lattice.

    Fields: link angles ``(B, 2, L_0, L_1)`` in radians; ``S`` is dimensionless, shape ``(B,)``.
    Any lattice size works (the flows later need multiples of 4).
    """

    theory: ClassVar[str] = "u1"
    dimensions: ClassVar[tuple[int, ...]] = (2,)
    example_params: ClassVar[dict] = {"beta": 2.0}
    period: ClassVar[float] = 2 * math.pi  # link angles

    #: Largest beta accepted: the exact finite-volume values that every summary compares with (the
    #: character sums of :mod:`lattice_flows_u1.exact`) grow about tenfold in cost per decade of beta
    #: (``benchmarks/u1_exact_cost.py`` on 8x8, a busy 2-core machine: medians 1.2 s at 1e2, 6.7 s at 1e3,
    #: 18-23 s at 1e4, 199 s at 1e5), and their sums never end near 1e308.
    BETA_MAX: ClassVar[float] = 1e4

    beta: float = real(
        help="inverse gauge coupling beta (0 < beta <= 1e4: the exact values that the summary compares with "
        "cost about ten times more per decade of beta, 20 s at 1e4 and minutes beyond; benchmarks/u1_exact_cost.py)",
        gt=0.0,
        le=BETA_MAX,
    )

    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        if len(lattice_shape) != 2:
            raise ValueError(f"u1_wilson is a 2D theory: expected a lattice shape [L_0, L_1], got {list(lattice_shape)}")
        if min(lattice_shape) < 1:
            raise ValueError(f"expected positive lattice sizes, got {list(lattice_shape)}")
        return (2, *lattice_shape)

    def __call__(self, x: Tensor) -> Tensor:
        return self.beta * (1 - torch.cos(plaquette_angles(x))).sum(dim=(1, 2))

    def force(self, x: Tensor) -> Tensor:
        """``dS/dx_mu(n) = beta * sum of ±sin x_P`` over the two plaquettes containing the link.

        ``x_0(n)`` enters ``x_P(n)`` with + and ``x_P(n - e_1)`` with -; ``x_1(n)`` enters
        ``x_P(n - e_0)`` with + and ``x_P(n)`` with -.
        """
        s = torch.sin_(plaquette_angles(x))
        f = torch.empty_like(x)
        torch.sub(s, torch.roll(s, 1, dims=2), out=f[:, 0])
        torch.sub(torch.roll(s, 1, dims=1), s, out=f[:, 1])
        return f.mul_(self.beta)

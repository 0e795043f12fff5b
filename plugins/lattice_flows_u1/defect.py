"""``u1_wilson_defect``: the 2D U(1) Wilson action with a block of plaquettes at another coupling (a defect).

``S(x) = sum_P beta_P (1 - cos x_P)`` with ``beta_P = defect_beta`` on the plaquettes ``x_P(n)``,
``0 <= n_0 < a``, ``0 <= n_1 < b`` (``defect_shape = [a, b]``), and ``beta`` elsewhere. With a small
``defect_beta`` the topological charge moves through the defect, where a plaquette crosses ``pi`` cheaply,
while the rest of the lattice stays at ``beta``. It is the prior of the ``nonequilibrium`` sampler's protocol
that switches only the defect to ``beta`` (Bonanno, Nada, Vadacchino, arXiv:2402.06561, do the same with open
boundaries on a region of a 4D SU(N) lattice): the work then involves the defect's plaquettes alone, so its
spread does not grow with the volume. Not the Wilson action: the exact solution of :mod:`.exact` does not apply
to it (its observables report no exact values) and ``u1_exact`` refuses it.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor

from lattice_flows import Action
from lattice_flows.errors import ParameterError
from lattice_flows.params import real, widths

from .action import U1LinkFields, U1Wilson
from .geometry import plaquette_angles

__all__ = ["U1WilsonDefect"]


@attrs.frozen(kw_only=True)
class U1WilsonDefect(U1LinkFields, Action):
    """``S(x) = sum_P beta_P (1 - cos x_P)``, ``beta_P = defect_beta`` on an ``a x b`` block of plaquettes at the
    origin and ``beta`` elsewhere. Fields: link angles ``(B, 2, L_0, L_1)``; ``S`` is ``(B,)``. The lattice must
    hold the block (``L_0 >= a``, ``L_1 >= b``)."""

    theory: ClassVar[str] = "u1"
    dimensions: ClassVar[tuple[int, ...]] = (2,)
    example_params: ClassVar[dict] = {"beta": 2.0, "defect_beta": 0.5, "defect_shape": [1, 2]}
    period: ClassVar[float] = 2 * math.pi

    beta: float = real(help="inverse gauge coupling outside the defect (as u1_wilson's beta)", gt=0.0, le=U1Wilson.BETA_MAX)
    defect_beta: float = real(help="inverse gauge coupling on the defect's plaquettes (0: free plaquettes)", ge=0.0,
                              le=U1Wilson.BETA_MAX)
    defect_shape: tuple[int, ...] = widths(help="[a, b]: the defect is the block of plaquettes 0 <= n_0 < a, 0 <= n_1 < b")

    def __attrs_post_init__(self):
        if len(self.defect_shape) != 2:
            raise ParameterError("defect_shape", f"expected two sizes [a, b], got {list(self.defect_shape)}")

    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        if len(lattice_shape) != 2:
            raise ValueError(f"u1_wilson_defect is a 2D theory: expected a lattice shape [L_0, L_1], got {list(lattice_shape)}")
        if any(size < block for size, block in zip(lattice_shape, self.defect_shape)):
            raise ValueError(
                f"the defect {list(self.defect_shape)} does not fit on the lattice {list(lattice_shape)}: "
                "expected sizes at least the defect's"
            )
        return (2, *lattice_shape)

    def couplings(self, lattice_shape: Sequence[int], *, dtype=None, device=None) -> Tensor:
        """``beta_P`` ``(L_0, L_1)``: ``defect_beta`` on the block, ``beta`` elsewhere."""
        betas = torch.full(tuple(lattice_shape), self.beta, dtype=dtype, device=device)
        a, b = self.defect_shape
        betas[:a, :b] = self.defect_beta
        return betas

    def __call__(self, x: Tensor) -> Tensor:
        betas = self.couplings(x.shape[2:], dtype=x.dtype, device=x.device)
        return (betas * (1 - torch.cos(plaquette_angles(x)))).sum(dim=(1, 2))

    def force(self, x: Tensor) -> Tensor:
        """``dS/dx_mu(n)``: as :meth:`U1Wilson.force` with each plaquette's ``sin x_P`` weighted by its ``beta_P``."""
        s = torch.sin(plaquette_angles(x)) * self.couplings(x.shape[2:], dtype=x.dtype, device=x.device)
        return torch.stack([s - torch.roll(s, 1, dims=2), torch.roll(s, 1, dims=1) - s], dim=1)

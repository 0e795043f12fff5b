"""``xy_mobius``: coupling layers of Möbius maps of the circle for XY fields.

Layer ``i`` updates the sites of one checkerboard parity (``n_0 + ... + n_{D-1} = i mod 2``); all their
nearest neighbours are frozen. At an active site ``n``, with ``z = e^{i theta_n}`` and the mean of the
neighbours ``m_n = (1 / 2D) sum_{+-mu} e^{i theta_{n +- mu}}`` (``|m_n| <= 1``), the new angle is the
argument of the Möbius map of the unit circle (Rezende et al., arXiv:2002.02428)::

    z' = (z - w) / (1 - conj(w) z),   w = tanh(a_i) m_n,   |w| < 1,

    log |d theta' / d theta| = log(1 - |w|^2) - 2 log|1 - conj(w) z|,

a diffeomorphism of the circle whose inverse is the same map with ``-w``. It moves angles away from
(``a_i > 0``) or towards (``a_i < 0``) the direction of their neighbours, more so where the neighbours
are aligned: a mean-field trivializing map with one learnable number ``a_i`` per layer, zero at first
(the identity).

Rotating every angle by ``c`` rotates ``w`` and ``z`` by ``e^{ic}``, and the map commutes with it exactly.
It commutes with the translations that preserve the checkerboard, not with a shift by an odd number
of sites, so ``equivariant`` is false. Lattices of 2 or 3 dimensions with even sizes; the weights know no
lattice size, and the masks are non-persistent buffers, so a ``state_dict`` loads on any lattice.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor, nn

from lattice_flows import Flow
from lattice_flows.params import integer

from .action import wrap

__all__ = ["MobiusCouplingFlow"]


def _checkerboard(lattice_shape: Sequence[int], parity: int) -> Tensor:
    total = sum(
        torch.arange(L).view([L if nu == mu else 1 for nu in range(len(lattice_shape))])
        for mu, L in enumerate(lattice_shape)
    )
    return total % 2 == parity


class MobiusCouplingFlow(Flow):
    """Möbius coupling layers for XY angles ``(B, L_0, L_1)`` or ``(B, L_0, L_1, L_2)``, even sizes.

    Example:
        >>> import torch
        >>> flow = MobiusCouplingFlow(MobiusCouplingFlow.Config(n_layers=2), (4, 4))
        >>> z = torch.rand(3, 4, 4, dtype=torch.float64) * 6 - 3
        >>> with torch.no_grad():
        ...     x, logdet = flow(z)  # a new flow is the identity
        >>> float((x - z).abs().max()) < 1e-12, logdet.shape
        (True, torch.Size([3]))
    """

    theory: ClassVar[str] = "xy"
    equivariant: ClassVar[bool] = False
    example_params: ClassVar[dict] = {"n_layers": 4}

    @attrs.frozen(kw_only=True)
    class Config:
        """Spec parameters of ``xy_mobius``."""

        n_layers: int = integer(help="number of coupling layers (2 update every site once)", default=4, ge=1)

    def __init__(self, config: Config, lattice_shape: Sequence[int]):
        super().__init__(config, lattice_shape)
        self.check_lattice(lattice_shape)
        self.strength = nn.Parameter(torch.zeros(config.n_layers))  # a_i: tanh(a_i) in (-1, 1)
        for parity in (0, 1):
            self.register_buffer(f"active{parity}", _checkerboard(self.lattice_shape, parity), persistent=False)

    @classmethod
    def check_lattice(cls, lattice_shape: Sequence[int]) -> None:
        shape = tuple(lattice_shape)
        if len(shape) not in (2, 3) or any(not isinstance(n, int) or n < 2 or n % 2 for n in shape):
            raise ValueError(
                f"xy_mobius needs a lattice of 2 or 3 dimensions with even sizes (a checkerboard), got {list(shape)}"
            )

    def _layer(self, theta: Tensor, i: int, sign: float) -> tuple[Tensor, Tensor]:
        """Layer ``i`` (``sign = 1``) or its inverse (``sign = -1``) on ``theta``: the new angles and the
        log-derivative summed over the active sites, ``(B,)``."""
        if tuple(theta.shape[1:]) != self.lattice_shape:
            raise ValueError(
                f"xy_mobius built for lattice {list(self.lattice_shape)} got fields of shape {tuple(theta.shape)}"
            )
        active = getattr(self, f"active{i % 2}")
        z = torch.polar(torch.ones_like(theta), theta)
        n_dims = theta.dim() - 1
        mean = sum(torch.roll(z, s, dims=1 + mu) for mu in range(n_dims) for s in (1, -1)) / (2 * n_dims)
        w = sign * torch.tanh(self.strength[i]).to(theta.dtype) * mean
        denominator = 1 - w.conj() * z
        new = wrap(torch.angle((z - w) / denominator))
        log_derivative = torch.log1p(-w.abs() ** 2) - 2 * torch.log(denominator.abs())
        theta = torch.where(active, new, theta)
        return theta, (log_derivative * active).flatten(1).sum(dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for i in range(self.config.n_layers):
            z, ld = self._layer(z, i, 1.0)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for i in reversed(range(self.config.n_layers)):
            x, ld = self._layer(x, i, -1.0)
            logdet = logdet + ld
        return x, logdet

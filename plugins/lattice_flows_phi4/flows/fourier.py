"""A learnable free-field layer: a linear map diagonal in momentum space, ``x = F^-1 [ g(p) F z ]``.

``g(p) > 0`` depends on the lattice momentum only through ``phat^2 = sum_mu 4 sin^2(p_mu / 2)``, so the map
is real, translation equivariant, odd (``z -> -z``) and its weights know no lattice size. It is

    log g(p) = a - (w / 2) log(e^b + phat^2) + sum_k c_k (phat^2 / 4D)^k,   k = 1 .. n_terms,

which starts as the identity (``a = w = c_k = 0``) and holds the exact map of a free field: with
``K(p) = 2 a' - 2 c' sum_mu cos p_mu = 2 a' - 2 c' D + c' phat^2``, ``g = K^(-1/2)`` is ``w = 1``,
``e^b = (2 a' - 2 c' D) / c'``, ``a = -(1/2) log c'`` (:mod:`lattice_flows_phi4.exact`). Put before the
coupling layers, it turns the standard normal prior into a learned Gaussian with the long-range
correlations of a nearly critical field, which local couplings are slow to build.
``log|det| = sum_p log g(p)``, the same for every configuration.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FreeFieldLayer", "lattice_momentum_squared"]


def lattice_momentum_squared(lattice_shape: Sequence[int], *, device=None) -> Tensor:
    """``phat^2(p) = sum_mu 4 sin^2(pi k_mu / L_mu)`` on the momenta of the FFT, float64 ``(L_0, ..., L_{D-1})``."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for mu, L in enumerate(lattice_shape):
        k = torch.arange(L, dtype=torch.float64, device=device)
        total = total + (4 * torch.sin(math.pi * k / L) ** 2).view([L if nu == mu else 1 for nu in range(len(lattice_shape))])
    return total


class FreeFieldLayer(nn.Module):
    """``x = F^-1 [g(p) F z]`` on fields ``(B, L_0, ..., L_{D-1})``; see the module docstring."""

    def __init__(self, lattice_shape: Sequence[int], n_terms: int = 2):
        super().__init__()
        self.log_amplitude = nn.Parameter(torch.zeros(()))  # a
        self.propagator_weight = nn.Parameter(torch.zeros(()))  # w
        self.log_mass2 = nn.Parameter(torch.zeros(()))  # b
        self.polynomial = nn.Parameter(torch.zeros(n_terms))  # c_k
        phat2 = lattice_momentum_squared(lattice_shape)
        self.register_buffer("phat2", phat2, persistent=False)  # float64: converted by .to(dtype)
        self.n_dims = len(lattice_shape)

    def log_g(self) -> Tensor:
        """``log g(p)`` in the parameters' dtype, shape ``(L_0, ..., L_{D-1})``."""
        q = self.phat2.to(self.polynomial.dtype)  # the buffer is float64 until the module is converted
        powers = torch.stack([(q / (4 * self.n_dims)) ** (k + 1) for k in range(self.polynomial.numel())], -1)
        return (
            self.log_amplitude
            - 0.5 * self.propagator_weight * torch.log(torch.exp(self.log_mass2) + q)
            + powers @ self.polynomial
        )

    def _multiply(self, z: Tensor, log_g: Tensor) -> Tensor:
        dims = tuple(range(1, z.dim()))
        return torch.fft.ifftn(torch.fft.fftn(z, dim=dims) * torch.exp(log_g), dim=dims).real

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_g = self.log_g().to(z.dtype)
        return self._multiply(z, log_g), log_g.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_g = self.log_g().to(x.dtype)
        return self._multiply(x, -log_g), (-log_g.sum()).expand(x.shape[0])

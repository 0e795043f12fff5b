"""A learnable map of the zero mode alone: ``x = z + (h(M) - M)`` on every site, ``M = (1/V) sum_n z(n)``.

``h(m) = s_1 sinh(alpha asinh(m / s_0))`` is odd and increasing, so the map is invertible in closed form
(``m = s_0 sinh(asinh(y / s_1) / alpha)``), commutes with ``z -> -z`` and with every translation, and its
parameters know no lattice size. It starts as the identity (``s_0 = s_1 = alpha = 1``). The Jacobian is
the identity except along the uniform direction, where it is ``h'(M)``, so ``log|det| = log h'(M)``.

Why: near the transition the magnetization of phi^4 is bimodal, ``P(M) ~ exp(V (A M^2 - B M^4))``, and a
stack of local coupling layers builds that shape slowly and not reliably. ``alpha < 1`` makes ``h`` grow
like ``m^alpha`` (``alpha = 1/2`` turns Gaussian tails into quartic ones) with a steep centre (``s_0``
small), which empties the middle: a normal ``M`` becomes a double-peaked one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ZeroModeLayer"]


class ZeroModeLayer(nn.Module):
    """``x = z + (h(M) - M)`` on fields ``(B, L_0, ..., L_{D-1})``; see the module docstring."""

    def __init__(self):
        super().__init__()
        self.log_scale_in = nn.Parameter(torch.zeros(()))  # log s_0
        self.log_scale_out = nn.Parameter(torch.zeros(()))  # log s_1
        self.log_power = nn.Parameter(torch.zeros(()))  # log alpha

    def _h(self, m: Tensor) -> tuple[Tensor, Tensor]:
        """``(h(m), log h'(m))`` for magnetizations ``m`` of shape ``(B,)``."""
        alpha = torch.exp(self.log_power)
        u = torch.asinh(m * torch.exp(-self.log_scale_in))
        y = torch.exp(self.log_scale_out) * torch.sinh(alpha * u)
        # h' = s_1 alpha cosh(alpha u) / (s_0 cosh u), with cosh u = sqrt(1 + (m / s_0)^2)
        log_dh = (
            self.log_scale_out
            + self.log_power
            - self.log_scale_in
            + _log_cosh(alpha * u)
            - _log_cosh(u)
        )
        return y, log_dh

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m = z.flatten(1).mean(1)
        y, log_dh = self._h(m)
        return z + (y - m).view(-1, *([1] * (z.dim() - 1))), log_dh

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x.flatten(1).mean(1)
        alpha = torch.exp(self.log_power)
        m = torch.exp(self.log_scale_in) * torch.sinh(torch.asinh(y * torch.exp(-self.log_scale_out)) / alpha)
        _, log_dh = self._h(m)
        return x + (m - y).view(-1, *([1] * (x.dim() - 1))), -log_dh


def _log_cosh(u: Tensor) -> Tensor:
    """``log cosh u`` without overflow: ``|u| + log((1 + e^{-2|u|}) / 2)``."""
    a = u.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - 0.6931471805599453

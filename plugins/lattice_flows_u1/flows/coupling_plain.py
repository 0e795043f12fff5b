"""The plaquette coupling layer in ordinary differentiable torch operations (no custom autograd node).

Shapes, with ``B`` the batch: plaquettes ``(L_0, L_1, B)``; input masks ``(L_0, k, L_1, 1)`` (``k = 1``:
frozen plaquettes; ``k = 2``: also the active sites, whose ``1 x 2`` rectangles the conditioner reads);
conditioner outputs ``(L_0, n_params, L_1, B)``; the active stripe of layer ``(mu, offset)``, the sites
``n_nu = offset (mod 4)`` (``nu = 1 - mu``), ``S = (L_0, L_1/4, B)`` for ``mu = 0`` and ``(L_0/4, L_1, B)``
for ``mu = 1``. The maths is in :mod:`.coupling`'s docstring.

This is the ``plain`` kernel path of :mod:`.coupling` (and, compiled, its ``compile`` path); the
``fused`` path (:mod:`.coupling_fused`) computes the same values with hand-written derivatives and
differentiates :func:`layer` under ``create_graph``. Autograd differentiates everything here to any order.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F
import torch

from .circle_maps import CircleMap

__all__ = ["features", "conditioner", "stripe", "param_stripe", "moved", "layer", "net_params"]


def net_params(net: nn.Sequential) -> list:
    """The weights and biases of the convolutions of ``net``, in order."""
    return [t for m in net if isinstance(m, nn.Conv2d) for t in (m.weight, m.bias)]


def features(plaq: Tensor, mask: Tensor, nu: int) -> Tensor:
    """What the conditioner reads: ``(cos, sin)`` of loops times the mask, ``(L_0, 2k, L_1, B)``, from
    plaquettes ``(L_0, L_1, B)`` and a mask ``(L_0, k, L_1, 1)``. The loops are the plaquettes and, for
    ``k = 2``, the ``1 x 2`` rectangles ``x_P(n) + x_P(n - e_nu)`` (``nu`` is also the axis of ``n_nu``)."""
    loops = plaq.unsqueeze(1) if mask.shape[1] == 1 else torch.stack([plaq, plaq + plaq.roll(1, nu)], dim=1)
    return torch.stack([torch.cos(loops), torch.sin(loops)], dim=2).mul_(mask.unsqueeze(2)).flatten(1, 2)


def conditioner(plaq: Tensor, mask: Tensor, net: nn.Sequential, params: Sequence[Tensor], nu: int = 0) -> Tensor:
    """The conditioner with ``conv2d`` and autograd: ``(L_0, n, L_1, B)``, differentiable to any order.

    ``params``: :func:`net_params` of ``net`` (passed so that a caller may substitute tensors for them)."""
    x = features(plaq, mask, nu).permute(3, 1, 0, 2)  # (B, 2k, L_0, L_1)
    i = 0
    for module in net:
        if isinstance(module, nn.Conv2d):
            w, b = params[i], params[i + 1]
            i += 2
            p = w.shape[-1] // 2
            if p:  # circular padding by gathers, valid for kernels of any size
                L0, L1 = x.shape[2], x.shape[3]
                x = x.index_select(2, (torch.arange(L0 + 2 * p, device=x.device) - p) % L0)
                x = x.index_select(3, (torch.arange(L1 + 2 * p, device=x.device) - p) % L1)
            x = F.conv2d(x, w, b)
        else:
            x = module(x)
    return x.permute(2, 1, 3, 0)


def stripe(t: Tensor, mu: int, offset: int) -> Tensor:
    """Sites ``n_nu = offset (mod 4)`` of ``t`` ``(L_0, L_1, B)``: a view of shape ``S``."""
    o = offset % 4
    return t[:, o::4] if mu == 0 else t[o::4]


def param_stripe(out: Tensor, mu: int, offset: int) -> Tensor:
    """A conditioner output ``(L_0, n, L_1, B)`` on the stripe, parameters first: a view ``(n, *S)``."""
    o = offset % 4
    return (out[:, :, o::4] if mu == 0 else out[o::4]).transpose(0, 1)


def moved(plaq: Tensor, delta: Tensor, mu: int, offset: int, view=None) -> Tensor:
    """The plaquettes after the active stripe moved by ``delta`` (and so the passive one by ``-delta``).

    ``view(t, mu, offset)`` gives the stripe views (default :func:`stripe`; the fused path passes its strided one).
    """
    view = stripe if view is None else view
    new = plaq.clone()
    view(new, mu, offset).add_(delta)
    if offset % 4:
        view(new, mu, offset - 1).sub_(delta)
    else:  # row m of the stripe 3 holds the passive plaquettes of row m + 1 of the stripe 0
        view(new, mu, 3).sub_(delta.roll(-1, dims=1 - mu))
    return new


def layer(
    plaq: Tensor,
    mask: Tensor,
    net: nn.Sequential,
    circle_map: CircleMap,
    mu: int,
    offset: int,
    params: Sequence[Tensor],
    *,
    plain_map: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One coupling layer: ``(plaquettes after, displacement (*S), log-det (B,))``.

    ``plain_map``: take the circle map's :meth:`~.circle_maps.CircleMap.displacement_plain` (no custom
    autograd node at all) rather than its :meth:`~.circle_maps.CircleMap.displacement`."""
    out = conditioner(plaq, mask, net, params, 1 - mu).contiguous()
    displacement = circle_map.displacement_plain if plain_map else circle_map.displacement
    delta, logd = displacement(stripe(plaq, mu, offset), param_stripe(out, mu, offset))
    return moved(plaq, delta, mu, offset), delta, logd.sum(dim=(0, 1))

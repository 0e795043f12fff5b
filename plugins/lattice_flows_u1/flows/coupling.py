"""``u1_plaquette_coupling``: gauge-equivariant plaquette coupling layers (Kanwar et al., arXiv:2003.06413).

Layer ``i`` has a direction ``mu`` and an offset ``o`` (:func:`.masks.layer_labels`; 8 consecutive
layers make every link active once) and acts on link angles ``(B, 2, L_0, L_1)`` as follows, with
the plaquette sets of :mod:`.masks`:

1. the conditioner, a convolutional net with circular padding (:func:`lattice_flows.nn.conv_net`),
   reads ``(cos x_P, sin x_P)`` on the frozen plaquettes (zero elsewhere) and, with ``rectangles``
   (the default), ``(cos x_R, sin x_R)`` of the ``1 x 2`` rectangle ``x_R(n) = x_P(n) + x_P(n - e_nu)``
   at each active site ``n`` (zero elsewhere), and gives the raw parameters of a circle map ``h``
   (:mod:`.circle_maps`) at every site. The rectangle is the active plaquette joined to its passive
   one; it does not hold the active link, so the layer leaves it unchanged, and it tells the map of
   ``x_P(n)`` the value of the neighbour that the update will move the other way;
2. each active plaquette moves to ``h(x_P)``: its active link changes by ``sign * (h(x_P) - x_P)``,
   ``sign`` the link's sign in that plaquette, so the passive plaquette holding the link moves by
   ``-(h(x_P) - x_P)``;
3. ``log|det dx/dz|`` gains ``sum log h'(x_P)`` over the active plaquettes (the Jacobian is triangular:
   the frozen plaquettes hold no active link, and each active link sits in one active plaquette).

Plaquettes and the conditioner's inputs are gauge invariant, so the flow is gauge equivariant,
``f(g.z) = g.f(z)`` modulo ``2 pi``; outputs are wrapped into ``[-pi, pi)``. The nets' last layers start
at zero, so a new flow is the identity. Weights know no lattice size; everything that does (masks,
gather indices) is a non-persistent buffer, so a ``state_dict`` saved on one lattice loads on any other.

How it is computed (the speed matters: training steps on small lattices are dominated by the number
of operations, not by arithmetic):

- The plaquettes are computed once per pass and then updated with the links (the active stripe
  gains ``d = h(x_P) - x_P``, the passive one loses it); the stripes are strided views. Link changes
  are collected per stripe and added to the input once, at the end.
- Activations are laid out ``(L_0, C, L_1, B)``. A circular ``k x k`` convolution then takes one
  gather along each lattice axis and one batched product: ``xw[n_0 + i, c, (j, n_1), b] =
  x[n_0 + i - p, c, n_1 + j - p, b]`` (periodic, ``p = k // 2``) holds, for every output row ``n_0``,
  the matrix ``[(i, c, j), (n_1, b)]`` as a strided view (rows ``(i, c, j)`` merge because ``L_0`` is
  outside ``C`` and ``C`` outside the taps; columns because ``B`` is innermost), which one ``bmm`` over
  ``n_0`` multiplies by the weight as an ``(O, k C k)`` matrix. The nets are the modules of
  :func:`~lattice_flows.nn.conv_net` (same weights and ``state_dict``), evaluated this way.
- Each layer (conditioner, circle map, plaquette update) is one autograd node with a hand-written
  backward; the gathered gradient of a convolution's output serves both its input and its weight
  gradients. Under ``create_graph`` (higher derivatives, e.g. a loss on the force) the backward
  differentiates a plain autograd implementation (:func:`_layer_reference`) instead, so derivatives
  of every order are exact.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lattice_flows import Flow
from lattice_flows.nn import ACTIVATIONS, conv_net
from lattice_flows.params import choice, flag, integer, odd_integer, widths

from ..geometry import plaquette_angles, wrap
from . import masks
from .circle_maps import NCP, CircleMap, CircularSpline

__all__ = ["PlaquetteCouplingFlow", "conditioner", "circular_indices"]

NAME = "u1_plaquette_coupling"


# -- circular convolutions in the (L_0, C, L_1, B) layout ----------------------------------------


def circular_indices(lattice_shape: Sequence[int], kernel_size: int, device=None) -> tuple[Tensor, Tensor]:
    """The gathers of a circular ``k x k`` convolution (``p = k // 2``), int64:
    rows ``n_0 - p .. L_0 - 1 + p`` and, tap after tap ``j``, columns ``n_1 + j - p``, modulo the lattice."""
    L0, L1 = lattice_shape
    p = kernel_size // 2
    rows = (torch.arange(L0 + 2 * p, device=device) - p) % L0
    cols = (torch.arange(L1, device=device)[None, :] + torch.arange(kernel_size, device=device)[:, None] - p) % L1
    return rows, cols.reshape(-1)


class _Plan:
    """Index tensors and scratch buffers of one flow on one device (nothing here is a weight).

    ``rows, cols``: :func:`circular_indices`. ``takes[(O, C, k)]``: flat indices into an ``(O, C, k, k)``
    weight giving the forward matrix ``[o, (i, c, j)]`` and the adjoint matrix ``[c, (i, o, j)] =
    w[o, c, k-1-i, k-1-j]``, and into the ``(C, (i, o, j))`` weight-gradient product giving ``(O, C, k, k)``.
    ``scratch``: buffers reused for the short-lived gathers (fresh memory costs more than the gather).
    """

    def __init__(self, lattice_shape, kernel_size, device):
        self.rows, self.cols = circular_indices(lattice_shape, kernel_size, device)
        self.takes: dict = {}
        self.scratch: dict = {}
        self.device = device

    def take(self, O: int, C: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
        key = (O, C, k)
        if key not in self.takes:
            flat = torch.arange(O * C * k * k, device=self.device).view(O, C, k, k)
            forward = flat.permute(0, 2, 1, 3).reshape(O, k * C * k)
            adjoint = flat.flip(2, 3).permute(1, 2, 0, 3).reshape(C, k * O * k)
            # grad[o, c, i, j] = product[c, (k-1-i, o, k-1-j)] in a (C, k, O, k) product
            prod = torch.arange(C * k * O * k, device=self.device).view(C, k, O, k)
            grad = prod.flip(1, 3).permute(2, 0, 1, 3).contiguous()
            self.takes[key] = (forward, adjoint, grad)
        return self.takes[key]

    def expand(self, x: Tensor) -> Tensor:
        """``(L_0, C, L_1, B) -> (L_0 + 2p, C, k L_1, B)``, the periodic neighbourhoods, in a scratch buffer
        (valid until the next call for the same shape)."""
        L0, C, L1, B = x.shape
        key = (C, L1, B, x.dtype)
        bufs = self.scratch.get(key)
        if bufs is None:
            if len(self.scratch) >= 16:  # batch sizes come and go: keep a bounded set
                self.scratch.clear()
            bufs = self.scratch[key] = (
                x.new_empty((self.rows.numel(), C, L1, B)),
                x.new_empty((self.rows.numel(), C, self.cols.numel(), B)),
            )
        torch.index_select(x, 0, self.rows, out=bufs[0])
        return torch.index_select(bufs[0], 2, self.cols, out=bufs[1])


def _window(xw: Tensor, L0: int) -> Tensor:
    """``(L_0, k C k, L_1 B)`` view of an expanded ``xw``: ``[n_0, (i, c, j), (n_1, b)]``."""
    Lp0, C, kL1, B = xw.shape
    k = Lp0 - L0 + 1
    return xw.as_strided((L0, k * C * k, (kL1 // k) * B), (xw.stride(0), (kL1 // k) * B, 1), xw.storage_offset())


def _conv(plan: _Plan, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Circular convolution of ``x`` ``(L_0, C, L_1, B)`` by an ``nn.Conv2d`` weight: ``(L_0, O, L_1, B)``."""
    L0, C, L1, B = x.shape
    O, _, k, _ = weight.shape
    w = torch.take(weight, plan.take(O, C, k)[0])
    window = _window(plan.expand(x), L0)
    w = w.expand(L0, O, k * C * k)  # a broadcast matmul would copy the strided window
    if bias is None:
        return torch.bmm(w, window).view(L0, O, L1, B)
    return torch.baddbmm(bias.unsqueeze(1), w, window).view(L0, O, L1, B)


def _conv_backward(plan: _Plan, x: Tensor, weight: Tensor, g: Tensor, need_x: bool, need_w: bool):
    """``(d/dx, d/dweight)`` of a circular convolution for the output gradient ``g`` ``(L_0, O, L_1, B)``.

    One gather of ``g`` serves both: the input gradient is the convolution of ``g`` with the adjoint
    kernel, and ``sum_n g[n, o] x[n + (i, j) - p, c] = sum_m x[m, c] g[m - (i, j) + p, o]``, where
    ``g[m - (i, j) + p]`` is tap ``(k-1-i, k-1-j)`` of the gathered ``g`` at ``m``.
    """
    L0, O, L1, B = g.shape
    C, k = weight.shape[1], weight.shape[-1]
    _, adjoint, to_grad = plan.take(O, C, k)
    window = _window(plan.expand(g), L0)
    grad_w = grad_x = None
    if need_w:
        product = torch.bmm(x.view(L0, C, L1 * B), window.transpose(1, 2)).sum(0)  # (C, (i', o, j'))
        grad_w = torch.take(product, to_grad)
    if need_x:
        grad_x = torch.bmm(torch.take(weight, adjoint).expand(L0, C, k * O * k), window).view(L0, C, L1, B)
    return grad_x, grad_w


# -- the conditioner ----------------------------------------------------------------------------

_ACTIVATION_BACKWARD = {
    # (module type) -> grad wrt the pre-activation z, from (grad wrt output, z, output, module)
    nn.Tanh: lambda g, z, y, m: torch.ops.aten.tanh_backward(g, y),
    nn.ReLU: lambda g, z, y, m: torch.ops.aten.threshold_backward(g, y, 0),
    nn.LeakyReLU: lambda g, z, y, m: torch.ops.aten.leaky_relu_backward(g, z, m.negative_slope, False),
    nn.SiLU: lambda g, z, y, m: torch.ops.aten.silu_backward(g, z),
    nn.GELU: lambda g, z, y, m: torch.ops.aten.gelu_backward(g, z, approximate=m.approximate),
}
#: Activations whose backward needs only their output (so the pre-activation is not kept).
_FROM_OUTPUT = (nn.Tanh, nn.ReLU)


def _conditioner_supported(net: nn.Sequential) -> bool:
    return all(isinstance(m, nn.Conv2d) or type(m) in _ACTIVATION_BACKWARD for m in net)


def _features(plaq: Tensor, mask: Tensor, nu: int) -> Tensor:
    """What the conditioner reads: ``(cos, sin)`` of loops times the mask, ``(L_0, 2k, L_1, B)``, from
    plaquettes ``(L_0, L_1, B)`` and a mask ``(L_0, k, L_1, 1)``. The loops are the plaquettes and, for
    ``k = 2``, the ``1 x 2`` rectangles ``x_P(n) + x_P(n - e_nu)`` (``nu`` is also the axis of ``n_nu``)."""
    loops = plaq.unsqueeze(1) if mask.shape[1] == 1 else torch.stack([plaq, plaq + plaq.roll(1, nu)], dim=1)
    return torch.stack([torch.cos(loops), torch.sin(loops)], dim=2).mul_(mask.unsqueeze(2)).flatten(1, 2)


def _features_backward(features: Tensor, g: Tensor, nu: int) -> Tensor:
    """The gradient with respect to the plaquettes ``(L_0, L_1, B)`` from that of :func:`_features`, ``g``."""
    L0, C, L1, B = g.shape
    prod = (features * g.view(L0, C // 2, 2, L1, B).flip(2).view(L0, C, L1, B)).view(L0, C // 2, 2, L1, B)
    per_loop = prod[:, :, 0] - prod[:, :, 1]  # d/d loop of mask * (cos, sin)(loop): (L_0, k, L_1, B)
    if C == 2:
        return per_loop[:, 0]
    rect = per_loop[:, 1]
    return per_loop[:, 0] + rect + rect.roll(-1, nu)


def _conditioner_reference(plaq: Tensor, mask: Tensor, net: nn.Sequential, params: Sequence[Tensor], nu: int = 0) -> Tensor:
    """The conditioner with ``conv2d`` and autograd: ``(L_0, n, L_1, B)``, differentiable to any order."""
    x = _features(plaq, mask, nu).permute(3, 1, 0, 2)  # (B, 2k, L_0, L_1)
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


def _conditioner_forward(plan: _Plan, plaq: Tensor, mask: Tensor, net: nn.Sequential, params, nu: int = 0) -> tuple[Tensor, list]:
    """The conditioner's output ``(L_0, n, L_1, B)`` and what :func:`_conditioner_backward` needs (only the
    compact activations: the gathers are redone in the backward, which costs less than keeping them)."""
    x = _features(plaq, mask, nu)
    inputs, pre = [x], []
    i = 0
    for module in net:
        if isinstance(module, nn.Conv2d):
            x = _conv(plan, x, params[i], params[i + 1])
            i += 2
        else:
            if isinstance(module, _FROM_OUTPUT):
                pre.append(None)
                x = module(x) if not isinstance(module, nn.Tanh) else x.tanh_()
            else:
                pre.append(x)
                x = module(x)
            inputs.append(x)
    return x, inputs + pre


def _conditioner_backward(plan, g, net, params, saved, need_plaq, need_params, nu: int = 0):
    """``(d loss/d plaq or None, [d loss/d param or None])`` for the output gradient ``g`` ``(L_0, n, L_1, B)``."""
    n_conv = len(params) // 2
    inputs, pre = saved[:n_conv], saved[n_conv:]  # the input of each convolution; pre-activations or None
    activations = [m for m in net if not isinstance(m, nn.Conv2d)]
    param_grads: list = [None] * len(params)
    grad_plaq = None
    for layer in reversed(range(n_conv)):
        need_x = layer > 0 or need_plaq
        if need_params[2 * layer + 1]:
            param_grads[2 * layer + 1] = g.sum(dim=(0, 2, 3))
        if not (need_x or need_params[2 * layer]):
            break
        ga, param_grads[2 * layer] = _conv_backward(
            plan, inputs[layer], params[2 * layer], g, need_x, need_params[2 * layer]
        )
        if layer > 0:
            act = activations[layer - 1]
            g = _ACTIVATION_BACKWARD[type(act)](ga, pre[layer - 1], inputs[layer], act)
        elif need_x:
            grad_plaq = _features_backward(inputs[0], ga, nu)
    return grad_plaq, param_grads


class _Conditioner(torch.autograd.Function):
    """:func:`conditioner` as one autograd node with a hand-written backward."""

    @staticmethod
    def forward(ctx, plaq, mask, plan, net, nu, *params):
        out, saved = _conditioner_forward(plan, plaq, mask, net, params, nu)
        ctx.net, ctx.plan, ctx.n, ctx.nu = net, plan, len(params), nu
        ctx.save_for_backward(plaq, mask, *params, *saved)
        return out

    @staticmethod
    def backward(ctx, g):
        plaq, mask, *rest = ctx.saved_tensors
        params, saved = rest[: ctx.n], rest[ctx.n :]
        need_plaq, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[5:]
        if torch.is_grad_enabled():  # create_graph: differentiate a differentiable recomputation
            wanted = [t for t, need in zip((plaq, *params), (need_plaq, *need_params)) if need]
            with torch.enable_grad():
                out = _conditioner_reference(plaq, mask, ctx.net, params, ctx.nu)
            found = iter(torch.autograd.grad(out, wanted, g, create_graph=True, allow_unused=True))
            grads = [next(found) if need else None for need in (need_plaq, *need_params)]
            return grads[0], None, None, None, None, *grads[1:]
        grad_plaq, param_grads = _conditioner_backward(
            ctx.plan, g.contiguous(), ctx.net, params, saved, need_plaq, need_params, ctx.nu
        )
        return grad_plaq, None, None, None, None, *param_grads


def _net_params(net: nn.Sequential) -> list:
    return [t for m in net if isinstance(m, nn.Conv2d) for t in (m.weight, m.bias)]


def conditioner(plaq: Tensor, mask: Tensor, net: nn.Sequential, plan: _Plan | None = None, nu: int = 0) -> Tensor:
    """Evaluate a :func:`~lattice_flows.nn.conv_net` on the masked ``(cos, sin)`` of loops.

    ``plaq``: ``(L_0, L_1, B)``; ``mask``: ``(L_0, k, L_1, 1)``, ``k = 1`` (the plaquettes it keeps) or
    ``k = 2`` (then also the rectangles ``x_P(n) + x_P(n - e_nu)`` it keeps). Returns
    ``(L_0, n_params, L_1, B)``, what the net gives on the ``(B, 2k, L_0, L_1)`` features, transposed.
    Differentiable to any order. ``plan`` caches index tensors and buffers between calls.
    """
    params = _net_params(net)
    if not _conditioner_supported(net):
        return _conditioner_reference(plaq, mask, net, params, nu)
    if plan is None:
        plan = _Plan(plaq.shape[:2], net[0].kernel_size[0], plaq.device)
    return _Conditioner.apply(plaq, mask, plan, net, nu, *params)


# -- one coupling layer -------------------------------------------------------------------------


def _stripe(t: Tensor, mu: int, offset: int) -> Tensor:
    """Sites ``n_nu = offset (mod 4)`` of a contiguous ``t`` ``(L_0, L_1, B)``: a strided view of shape
    ``S = (L_0, L_1/4, B)`` for ``mu = 0``, ``(L_0/4, L_1, B)`` for ``mu = 1``."""
    L0, L1, B = t.shape
    o = offset % 4
    if mu == 0:
        return t.as_strided((L0, L1 // 4, B), (L1 * B, 4 * B, 1), t.storage_offset() + o * B)
    return t.as_strided((L0 // 4, L1, B), (4 * L1 * B, B, 1), t.storage_offset() + o * L1 * B)


def _param_stripe(out: Tensor, mu: int, offset: int) -> Tensor:
    """A contiguous conditioner output ``(L_0, n, L_1, B)`` on the stripe, parameters first: ``(n, *S)``."""
    L0, n, L1, B = out.shape
    o = offset % 4
    if mu == 0:
        return out.as_strided((n, L0, L1 // 4, B), (L1 * B, n * L1 * B, 4 * B, 1), out.storage_offset() + o * B)
    return out.as_strided((n, L0 // 4, L1, B), (L1 * B, 4 * n * L1 * B, B, 1), out.storage_offset() + o * n * L1 * B)


def _passive(t: Tensor, mu: int, offset: int) -> Tensor:
    """The passive plaquettes of ``t`` ``(L_0, L_1, B)`` aligned with the stripe (:func:`_stripe`) of
    their active links: the link at ``n_nu = 4 m + offset`` is in the plaquette at ``n_nu - 1``, which is
    row ``m`` of the stripe ``offset - 1``, or for ``offset = 0`` row ``m - 1`` of the stripe 3 (a copy)."""
    if offset % 4:
        return _stripe(t, mu, offset - 1)
    return _stripe(t, mu, 3).roll(1, dims=1 - mu)


def _moved(plaq: Tensor, delta: Tensor, mu: int, offset: int) -> Tensor:
    """The plaquettes after the active stripe moved by ``delta`` (and so the passive one by ``-delta``)."""
    new = plaq.clone()
    _stripe(new, mu, offset).add_(delta)
    if offset % 4:
        _stripe(new, mu, offset - 1).sub_(delta)
    else:  # row m of the stripe 3 holds the passive plaquettes of row m + 1 of the stripe 0
        _stripe(new, mu, 3).sub_(delta.roll(-1, dims=1 - mu))
    return new


def _layer_reference(plaq, mask, net, circle_map, mu, offset, params):
    """One coupling layer with autograd throughout: ``(plaquettes after, displacement, log-det (B,))``."""
    out = _conditioner_reference(plaq, mask, net, params, 1 - mu).contiguous()
    delta, logd = circle_map.displacement(_stripe(plaq, mu, offset), _param_stripe(out, mu, offset))
    return _moved(plaq, delta, mu, offset), delta, logd.sum(dim=(0, 1))


class _CouplingLayer(torch.autograd.Function):
    """One coupling layer as a single autograd node (per-node overhead dominates on small lattices).

    Inputs: plaquettes ``(L_0, L_1, B)`` (contiguous), the input mask ``(L_0, k, L_1, 1)``, the layer
    ``(plan, net, circle_map, mu, offset, need_state)`` (``need_state``: whether a backward may follow),
    then the net's weights and biases. Outputs: the plaquettes after the layer, the displacement ``d``
    on the active stripe ``(*S)``, and ``sum log h'`` per configuration ``(B,)``. The backward chains
    the circle map's :meth:`~.circle_maps.CircleMap.displacement_vjp` and the conditioner's backward;
    under ``create_graph`` it differentiates :func:`_layer_reference` instead.
    """

    @staticmethod
    def forward(ctx, plaq, mask, layer, *params):
        plan, net, circle_map, mu, offset, need_state = layer
        out, saved = _conditioner_forward(plan, plaq, mask, net, params, 1 - mu)
        x = _stripe(plaq, mu, offset)
        delta, logd, state = circle_map.displacement_with_state(x, _param_stripe(out, mu, offset), need_state)
        ctx.layer, ctx.n, ctx.state = layer, len(params), state  # the state may hold a private graph
        ctx.save_for_backward(plaq, mask, out, *params, *saved)
        return _moved(plaq, delta, mu, offset), delta, logd.sum(dim=(0, 1))

    @staticmethod
    def backward(ctx, g_new, g_delta, g_logdet):
        plan, net, circle_map, mu, offset, _ = ctx.layer
        plaq, mask, out, *rest = ctx.saved_tensors
        params, saved, state = rest[: ctx.n], rest[ctx.n :], ctx.state
        need_plaq, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():  # create_graph: differentiate a differentiable recomputation
            wanted = [t for t, need in zip((plaq, *params), (need_plaq, *need_params)) if need]
            with torch.enable_grad():
                outs = _layer_reference(plaq, mask, net, circle_map, mu, offset, params)
            grad_outs = (g_new, g_delta, g_logdet)
            found = iter(torch.autograd.grad(outs, wanted, grad_outs, create_graph=True, allow_unused=True))
            grads = [next(found) if need else None for need in (need_plaq, *need_params)]
            return grads[0], None, None, *grads[1:]
        g_new = g_new.contiguous()
        # d reaches the output d, the active stripe (+) and the passive one (-)
        g_d = (g_delta + _stripe(g_new, mu, offset)).sub_(_passive(g_new, mu, offset))
        g_x, g_prm = circle_map.displacement_vjp(
            _stripe(plaq, mu, offset), _param_stripe(out, mu, offset), state, g_d, g_logdet
        )
        g_out = torch.zeros_like(out)
        _param_stripe(g_out, mu, offset).copy_(g_prm)
        g_plaq, param_grads = _conditioner_backward(plan, g_out, net, params, saved, need_plaq, need_params, 1 - mu)
        if need_plaq:
            g_plaq = g_plaq.add_(g_new) if g_plaq is not None else g_new.clone()
            _stripe(g_plaq, mu, offset).add_(g_x)
        return g_plaq, None, None, *param_grads


# -- the flow -----------------------------------------------------------------------------------


class PlaquetteCouplingFlow(Flow):
    """A stack of gauge-equivariant plaquette coupling layers for 2D U(1) links ``(B, 2, L_0, L_1)``.

    ``L_0`` and ``L_1`` must be multiples of 4. ``forward(z) -> (x, log|det dx/dz|)``,
    ``inverse(x) -> (z, log|det dz/dx|)``, log-determinants ``(B,)``; outputs in ``[-pi, pi)``.
    The circle map of the active plaquettes is :attr:`circle_map`, an :class:`.circle_maps.NCP` or a
    :class:`.circle_maps.CircularSpline` according to the spec's ``kernel``.

    Example:
        >>> flow = PlaquetteCouplingFlow(PlaquetteCouplingFlow.Config(n_layers=8, hidden=[4]), (8, 8))
        >>> z = torch.rand(3, 2, 8, 8) * 6 - 3
        >>> x, logdet = flow(z)
        >>> x.shape, logdet.shape
        (torch.Size([3, 2, 8, 8]), torch.Size([3]))
    """

    theory: ClassVar[str] = "u1"
    example_params: ClassVar[dict] = {"n_layers": 8, "hidden": [4], "kernel": "ncp", "n_mixture": 2}

    @attrs.frozen(kw_only=True)
    class Config:
        """Spec parameters of ``u1_plaquette_coupling``."""

        n_layers: int = integer(help="number of coupling layers (8 make every link active once)", default=16, ge=1)
        hidden: tuple[int, ...] = widths(help="channels of the hidden convolutions of each conditioner", default=(8, 8))
        kernel_size: int = odd_integer(help="size of the convolution kernels (odd)", default=3)
        activation: str = choice(tuple(ACTIVATIONS), help="activation between convolutions", default="tanh")
        kernel: str = choice(
            ("ncp", "spline"),
            help="circle map of the active plaquettes: 'spline' (rational-quadratic) or 'ncp' (tan mixtures)",
            default="spline",
        )
        n_mixture: int = integer(help="number of terms of the NCP mixture (kernel 'ncp')", default=6, ge=1)
        n_bins: int = integer(help="number of spline bins (kernel 'spline')", default=8, ge=2)
        rectangles: bool = flag(
            help="the conditioners also read the 1x2 rectangles made of an active and its passive plaquette "
            "(the layer leaves them unchanged)",
            default=True,
        )

    def __init__(self, config: Config, lattice_shape: Sequence[int]):
        self.check_lattice(lattice_shape)
        super().__init__(config, lattice_shape)
        self.circle_map: CircleMap = (
            NCP(n_mixture=config.n_mixture) if config.kernel == "ncp" else CircularSpline(n_bins=config.n_bins)
        )
        self.labels = [masks.layer_labels(i) for i in range(config.n_layers)]
        self.nets = nn.ModuleList(
            conv_net(
                4 if config.rectangles else 2,
                config.hidden,
                self.circle_map.n_params,
                kernel_size=config.kernel_size,
                activation=config.activation,
            )
            for _ in range(config.n_layers)
        )
        period = min(config.n_layers, masks.PERIOD)
        inputs = []
        for label in self.labels[:period]:
            m = masks.plaquette_masks(lattice_shape, *label)
            # the rectangle x_P(n) + x_P(n - e_nu) at an active n is its plaquette and the passive one
            inputs.append(torch.stack([m.frozen, m.active] if config.rectangles else [m.frozen]))
        # (period, L_0, k, L_1, 1), float so that a product keeps the dtype (it follows .to()).
        self.register_buffer("input_masks", torch.stack(inputs).permute(0, 2, 1, 3)[..., None].float(), persistent=False)
        self._plans: dict = {}

    @classmethod
    def check_lattice(cls, lattice_shape: Sequence[int]) -> None:
        masks.check_shape(lattice_shape, NAME)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (2, *self.lattice_shape):
            raise ValueError(
                f"{NAME} built for lattice {list(self.lattice_shape)} expects link angles of shape "
                f"(B, 2, {', '.join(map(str, self.lattice_shape))}), got {tuple(x.shape)}"
            )

    def _plan(self, device) -> _Plan:
        plan = self._plans.get(device)
        if plan is None:
            plan = self._plans[device] = _Plan(self.lattice_shape, self.config.kernel_size, device)
        return plan

    def _layer(self, i: int, plaq: Tensor, plan: _Plan, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer ``i`` on the plaquettes ``(L_0, L_1, B)``: ``(plaquettes after, displacement, log-det (B,))``."""
        mu, offset = self.labels[i]
        net = self.nets[i]
        params = _net_params(net)
        if _conditioner_supported(net):
            need_state = torch.is_grad_enabled() and (plaq.requires_grad or any(p.requires_grad for p in params))
            layer = (plan, net, self.circle_map, mu, offset, need_state)
            return _CouplingLayer.apply(plaq, mask, layer, *params)
        return _layer_reference(plaq, mask, net, self.circle_map, mu, offset, params)

    def _params(self, i: int, plaq: Tensor, plan: _Plan) -> Tensor:
        """Raw circle-map parameters of layer ``i`` on its active plaquettes, ``(n_params, *S)``."""
        mask = self.input_masks[i % masks.PERIOD]
        out = conditioner(plaq, mask, self.nets[i], plan, nu=1 - self.labels[i][0]).contiguous()
        return _param_stripe(out, *self.labels[i])

    def _links(self, z: Tensor, deltas: list) -> Tensor:
        """``z`` plus the plaquette displacements put on the active links (layer ``i``'s in ``deltas[i]``),
        wrapped: ``(B, 2, L_0, L_1)``."""
        L0, L1 = self.lattice_shape
        B = z.shape[0]
        shifts = []
        for mu in (0, 1):
            stripes = []
            for offset in range(4):
                ds = [d for d, label in zip(deltas, self.labels) if label == (mu, offset)]
                if not ds:
                    stripes.append(z.new_zeros((L0, L1 // 4, B) if mu == 0 else (L0 // 4, L1, B)))
                else:
                    stripes.append(ds[0] if len(ds) == 1 else torch.stack(ds).sum(0))
            shift = torch.stack(stripes, dim=2 if mu == 0 else 1).view(L0, L1, B)
            shifts.append(shift if masks.ACTIVE_SIGN[mu] > 0 else -shift)
        return wrap(z + torch.stack(shifts).permute(3, 0, 1, 2))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(z)
        plan = self._plan(z.device)
        plaq = plaquette_angles(z).permute(1, 2, 0).contiguous()  # (L_0, L_1, B)
        deltas, logdets = [], []
        inputs = self.input_masks.unbind(0)
        for i in range(len(self.labels)):
            plaq, delta, logdet = self._layer(i, plaq, plan, inputs[i % masks.PERIOD])
            deltas.append(delta)
            logdets.append(logdet)
        return self._links(z, deltas), torch.stack(logdets).sum(0)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        plan = self._plan(x.device)
        plaq = plaquette_angles(x).permute(1, 2, 0).contiguous()
        deltas, logdets = [None] * len(self.labels), []
        for i in reversed(range(len(self.labels))):
            mu, offset = self.labels[i]
            new = _stripe(plaq, mu, offset)
            old, logd = self.circle_map.inverse(new, self._params(i, plaq, plan))
            delta = old - new
            logdets.append(logd.sum(dim=(0, 1)))
            plaq = _moved(plaq, delta, mu, offset)
            deltas[i] = delta
        return self._links(x, deltas), torch.stack(logdets).sum(0)

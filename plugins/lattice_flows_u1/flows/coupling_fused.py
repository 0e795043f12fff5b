"""The ``fused`` kernel path of :mod:`.coupling`: each coupling layer as one autograd node with a
hand-written backward, convolutions as gathers and batched products.

Why it exists: training steps on small lattices are dominated by the number of operations, not by
arithmetic; ``benchmarks/train_flows.py speed --paths fused plain compile`` measures what it gains
against the :mod:`.coupling_plain` path and against ``torch.compile`` of that path (table in
``docs/flows.md``). What it computes equals :mod:`.coupling_plain` to rounding
(``tests/test_coupling_paths.py``).

- The plaquettes are updated with the links (the active stripe gains ``d = h(x_P) - x_P``, the passive
  one loses it) on strided views.
- Activations are laid out ``(L_0, C, L_1, B)``. A circular ``k x k`` convolution then takes one
  gather along each lattice axis and one batched product: ``xw[n_0 + i, c, (j, n_1), b] =
  x[n_0 + i - p, c, n_1 + j - p, b]`` (periodic, ``p = k // 2``) holds, for every output row ``n_0``,
  the matrix ``[(i, c, j), (n_1, b)]`` as a strided view (rows ``(i, c, j)`` merge because ``L_0`` is
  outside ``C`` and ``C`` outside the taps; columns because ``B`` is innermost), which one ``bmm`` over
  ``n_0`` multiplies by the weight as an ``(O, k C k)`` matrix. The nets are the modules of
  :func:`~lattice_flows.nn.conv_net` (same weights and ``state_dict``), evaluated this way.
- Each layer (conditioner, circle map, plaquette update) is one autograd node; the gathered gradient
  of a convolution's output serves both its input and its weight gradients; the circle map's part is
  its :meth:`~.circle_maps.CircleMap.displacement_vjp`. Under ``create_graph`` (higher derivatives,
  e.g. a loss on the force) the backward differentiates :func:`.coupling_plain.layer` instead, so
  derivatives of every order are exact.

The activations' backward formulas are private aten operators (``torch.ops.aten.tanh_backward`` and
kin), which PyTorch may rename or change. :func:`supported` checks each one once, on a small tensor
against autograd, before the first use; an activation whose operator is missing or answers
differently is not fused (one warning in the log), and the flow takes the plain path for that net.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from . import coupling_plain as plain

__all__ = ["Plan", "circular_indices", "supported", "conditioner", "CouplingLayer"]

log = logging.getLogger(__name__)


# -- circular convolutions in the (L_0, C, L_1, B) layout ----------------------------------------


def circular_indices(lattice_shape: Sequence[int], kernel_size: int, device=None) -> tuple[Tensor, Tensor]:
    """The gathers of a circular ``k x k`` convolution (``p = k // 2``), int64:
    rows ``n_0 - p .. L_0 - 1 + p`` and, tap after tap ``j``, columns ``n_1 + j - p``, modulo the lattice."""
    L0, L1 = lattice_shape
    p = kernel_size // 2
    rows = (torch.arange(L0 + 2 * p, device=device) - p) % L0
    cols = (torch.arange(L1, device=device)[None, :] + torch.arange(kernel_size, device=device)[:, None] - p) % L1
    return rows, cols.reshape(-1)


class Plan:
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


def _conv(plan: Plan, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Circular convolution of ``x`` ``(L_0, C, L_1, B)`` by an ``nn.Conv2d`` weight: ``(L_0, O, L_1, B)``."""
    L0, C, L1, B = x.shape
    O, _, k, _ = weight.shape
    w = torch.take(weight, plan.take(O, C, k)[0])
    window = _window(plan.expand(x), L0)
    w = w.expand(L0, O, k * C * k)  # a broadcast matmul would copy the strided window
    if bias is None:
        return torch.bmm(w, window).view(L0, O, L1, B)
    return torch.baddbmm(bias.unsqueeze(1), w, window).view(L0, O, L1, B)


def _conv_backward(plan: Plan, x: Tensor, weight: Tensor, g: Tensor, need_x: bool, need_w: bool):
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


# -- the activations' private backward operators, checked before use ------------------------------

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


@functools.lru_cache(maxsize=None)
def _backward_works(kind: type) -> bool:
    """Whether the private backward operator of the activation ``kind`` exists and agrees with autograd
    on a small float64 tensor (checked once per type; a failure is logged once)."""
    module = kind()
    with torch.inference_mode(False), torch.enable_grad():  # first use may come under no_grad
        return _check_backward(kind, module)


def _check_backward(kind: type, module: nn.Module) -> bool:
    z = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64).requires_grad_(True)
    g = torch.linspace(0.5, 1.5, 9, dtype=torch.float64)
    try:
        y = module(z)
        (expected,) = torch.autograd.grad(y, z, g)
        got = _ACTIVATION_BACKWARD[kind](g, z.detach(), y.detach(), module)
        ok = isinstance(got, Tensor) and got.shape == z.shape and bool(torch.allclose(got, expected, rtol=1e-12, atol=1e-12))
        problem = f"returned {got!r} instead of {expected!r}" if not ok else ""
    except Exception as error:  # a missing operator or a changed signature
        ok, problem = False, f"raised {type(error).__name__}: {error}"
    if not ok:
        log.warning(
            "lattice_flows_u1: the private operator behind the fused backward of %s %s (torch %s); "
            "coupling layers with this activation take the plain autograd path",
            kind.__name__, problem, torch.__version__,
        )
    return ok


def supported(net: nn.Sequential) -> bool:
    """Whether ``net`` (a :func:`~lattice_flows.nn.conv_net`) can be fused: only ``Conv2d`` modules and
    activations whose private backward operator passed :func:`_backward_works`."""
    return all(
        isinstance(m, nn.Conv2d) or (type(m) in _ACTIVATION_BACKWARD and _backward_works(type(m))) for m in net
    )


# -- the conditioner ----------------------------------------------------------------------------


def _features_backward(features: Tensor, g: Tensor, nu: int) -> Tensor:
    """The gradient with respect to the plaquettes ``(L_0, L_1, B)`` from that of
    :func:`.coupling_plain.features`, ``g``."""
    L0, C, L1, B = g.shape
    prod = (features * g.view(L0, C // 2, 2, L1, B).flip(2).view(L0, C, L1, B)).view(L0, C // 2, 2, L1, B)
    per_loop = prod[:, :, 0] - prod[:, :, 1]  # d/d loop of mask * (cos, sin)(loop): (L_0, k, L_1, B)
    if C == 2:
        return per_loop[:, 0]
    rect = per_loop[:, 1]
    return per_loop[:, 0] + rect + rect.roll(-1, nu)


def _conditioner_forward(plan: Plan, plaq: Tensor, mask: Tensor, net: nn.Sequential, params, nu: int = 0) -> tuple[Tensor, list]:
    """The conditioner's output ``(L_0, n, L_1, B)`` and what :func:`_conditioner_backward` needs (only the
    compact activations: the gathers are redone in the backward, which costs less than keeping them)."""
    x = plain.features(plaq, mask, nu)
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
                out = plain.conditioner(plaq, mask, ctx.net, params, ctx.nu)
            found = iter(torch.autograd.grad(out, wanted, g, create_graph=True, allow_unused=True))
            grads = [next(found) if need else None for need in (need_plaq, *need_params)]
            return grads[0], None, None, None, None, *grads[1:]
        grad_plaq, param_grads = _conditioner_backward(
            ctx.plan, g.contiguous(), ctx.net, params, saved, need_plaq, need_params, ctx.nu
        )
        return grad_plaq, None, None, None, None, *param_grads


def conditioner(plaq: Tensor, mask: Tensor, net: nn.Sequential, plan: Plan, nu: int = 0) -> Tensor:
    """:func:`.coupling_plain.conditioner` as one fused node; ``net`` must be :func:`supported`."""
    return _Conditioner.apply(plaq, mask, plan, net, nu, *plain.net_params(net))


# -- one coupling layer -------------------------------------------------------------------------


def _stripe(t: Tensor, mu: int, offset: int) -> Tensor:
    """:func:`.coupling_plain.stripe` of a contiguous ``t`` ``(L_0, L_1, B)``, as a strided view."""
    L0, L1, B = t.shape
    o = offset % 4
    if mu == 0:
        return t.as_strided((L0, L1 // 4, B), (L1 * B, 4 * B, 1), t.storage_offset() + o * B)
    return t.as_strided((L0 // 4, L1, B), (4 * L1 * B, B, 1), t.storage_offset() + o * L1 * B)


def _param_stripe(out: Tensor, mu: int, offset: int) -> Tensor:
    """:func:`.coupling_plain.param_stripe` of a contiguous ``out`` ``(L_0, n, L_1, B)``: ``(n, *S)``."""
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


class CouplingLayer(torch.autograd.Function):
    """One coupling layer as a single autograd node (per-node overhead dominates on small lattices).

    Inputs: plaquettes ``(L_0, L_1, B)`` (contiguous), the input mask ``(L_0, k, L_1, 1)``, the layer
    ``(plan, net, circle_map, mu, offset, need_state)`` (``need_state``: whether a backward may follow),
    then the net's weights and biases. Outputs: the plaquettes after the layer, the displacement ``d``
    on the active stripe ``(*S)``, and ``sum log h'`` per configuration ``(B,)``. The backward chains
    the circle map's :meth:`~.circle_maps.CircleMap.displacement_vjp` and the conditioner's backward;
    under ``create_graph`` it differentiates :func:`.coupling_plain.layer` instead.
    """

    @staticmethod
    def forward(ctx, plaq, mask, layer, *params):
        plan, net, circle_map, mu, offset, need_state = layer
        out, saved = _conditioner_forward(plan, plaq, mask, net, params, 1 - mu)
        x = _stripe(plaq, mu, offset)
        delta, logd, state = circle_map.displacement_with_state(x, _param_stripe(out, mu, offset), need_state)
        ctx.layer, ctx.n, ctx.state = layer, len(params), state  # the state may hold a private graph
        ctx.save_for_backward(plaq, mask, out, *params, *saved)
        return plain.moved(plaq, delta, mu, offset, view=_stripe), delta, logd.sum(dim=(0, 1))

    @staticmethod
    def backward(ctx, g_new, g_delta, g_logdet):
        plan, net, circle_map, mu, offset, _ = ctx.layer
        plaq, mask, out, *rest = ctx.saved_tensors
        params, saved, state = rest[: ctx.n], rest[ctx.n :], ctx.state
        need_plaq, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():  # create_graph: differentiate a differentiable recomputation
            wanted = [t for t, need in zip((plaq, *params), (need_plaq, *need_params)) if need]
            with torch.enable_grad():
                outs = plain.layer(plaq, mask, net, circle_map, mu, offset, params)
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

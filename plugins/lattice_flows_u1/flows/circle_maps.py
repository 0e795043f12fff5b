"""Invertible maps of the circle, applied elementwise to angles with per-site parameters.

A circle map ``h(x) = g(x) + t (mod 2 pi)`` is a strictly increasing bijection ``g`` of ``[-pi, pi]``
that fixes both ends (with equal derivatives there, so it is smooth on the circle) followed by a
rotation ``t``. Its parameters come from a conditioner: a tensor ``params`` of shape ``(n_params, *S)``
for angles of shape ``(*S)`` (parameter axis first, so that each parameter is a contiguous slice of
a network output laid out channels-first), raw (unconstrained) network outputs.

- :class:`NCP`: "non-compact projection" mixtures, ``g(x) = mean_k 2 atan(e^{s_k} tan(x/2))``
  (Kanwar et al. arXiv:2003.06413, Albergo et al. arXiv:2101.08176); the inverse has no closed
  form and is found by a safeguarded Newton iteration;
- :class:`CircularSpline`: a circular rational-quadratic spline (Durkan et al. arXiv:1906.04032,
  Rezende et al. arXiv:2002.02428), inverted in closed form.

``forward(x, params) -> (h(x), log h'(x))`` and ``inverse(y, params) -> (h^{-1}(y), log (h^{-1})'(y))``;
both return angles in ``[-pi, pi)`` exactly (:func:`lattice_flows.angles.wrap_exact`, importable from here
too: ``pi`` rounded to the dtype is excluded,
``-pi`` included) and accept any real input (it is read modulo ``2 pi``).
``displacement(x, params) -> (d, log h'(x))`` gives ``d = h(x) - x`` modulo ``2 pi``, unreduced, which is
all a coupling layer needs (it saves the reductions). All-zero parameters give the identity.
"""

from __future__ import annotations

import abc
import math

import attrs
import torch
from torch import Tensor
from torch.nn import functional as F

from lattice_flows.angles import pi_of, wrap, wrap_exact

__all__ = ["CircleMap", "NCP", "CircularSpline", "rational_quadratic_root", "wrap_exact"]


class CircleMap(abc.ABC):
    """A family of increasing diffeomorphisms of the circle, indexed by ``n_params`` raw numbers per site."""

    @property
    @abc.abstractmethod
    def n_params(self) -> int:
        """Number of raw parameters per site (the size of the first axis of ``params``)."""

    @abc.abstractmethod
    def displacement(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(h(x) - x, log h'(x))`` for angles ``x`` of shape ``(*S)`` and ``params`` ``(n_params, *S)``.

        The displacement is right modulo ``2 pi`` only: it is not reduced into an interval.
        """

    @abc.abstractmethod
    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(h^{-1}(y), log (h^{-1})'(y))`` with ``h^{-1}(y)`` in ``[-pi, pi)``; shapes as in :meth:`forward`."""

    def displacement_plain(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`displacement` in ordinary differentiable torch operations (no custom autograd node),
        for the ``plain`` and ``compile`` kernel paths of :mod:`.coupling`. By default :meth:`displacement`."""
        return self.displacement(x, params)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(h(x), log h'(x))``, ``h(x)`` in ``[-pi, pi)``, for ``x`` ``(*S)`` and ``params`` ``(n_params, *S)``."""
        d, logd = self.displacement(x, params)
        return wrap_exact(x + d), logd

    def __call__(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward(x, params)

    # For fused layers (one autograd node per coupling layer): the displacement computed without
    # recording into the caller's graph, with a state, and the vector-Jacobian product from that state.
    # By default the state is a private autograd graph of :meth:`displacement`; maps with closed-form
    # derivatives override both.

    def displacement_with_state(
        self, x: Tensor, params: Tensor, need_state: bool = True
    ) -> tuple[Tensor, Tensor, tuple]:
        """``(d, log h'(x), state)``, detached; ``state`` (empty unless ``need_state``) feeds
        :meth:`displacement_vjp`."""
        if not need_state:
            with torch.no_grad():
                d, logd = self.displacement(x, params)
            return d, logd, ()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            params = params.detach().requires_grad_(True)
            d, logd = self.displacement(x, params)
        return d.detach(), logd.detach(), (x, params, d, logd)

    def displacement_vjp(
        self, x: Tensor, params: Tensor, state: tuple, grad_d: Tensor, grad_logd: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Gradients of ``sum(grad_d * d + grad_logd * log h')`` with respect to ``x`` and ``params``.

        ``grad_logd`` may be anything that broadcasts to the shape of ``x`` (a per-configuration ``(B,)``).
        """
        x_leaf, params_leaf, d, logd = state
        grads = (grad_d, grad_logd.expand_as(logd))
        # retain_graph: a backward may run more than once (retain_graph outside, Jacobians)
        return torch.autograd.grad((d, logd), (x_leaf, params_leaf), grads, retain_graph=True)


@attrs.frozen(kw_only=True)
class NCP(CircleMap):
    """``h(x) = mean_k 2 atan(e^{s_k} tan(x/2)) + t``, ``k = 1..n_mixture``; params ``(s_1..s_K, t)``.

    Each term is evaluated as ``2 atan2(e^{s/2} sin(x/2), e^{-s/2} cos(x/2))``: no jump where
    ``tan(x/2)`` diverges (``x = ±pi``, even when rounding puts ``x`` just outside), and ``x + 2 pi``
    flips the sign of both arguments, which moves every term by the same ``±2 pi``, so any
    representative of the angle may be passed. The derivative of a term,
    ``e^s / (cos^2(x/2) + e^{2s} sin^2(x/2))``, is ``1 / (u^2 + v^2)`` with ``u, v`` the two arguments of
    ``atan2``; its log is ``-2 log hypot(u, v)`` (no overflow of ``e^{2s}``), and the mixture's is a
    ``logsumexp`` of those.

    The inverse solves ``g(x) = y - t`` by Newton's method kept inside a shrinking bracket (bisection
    when a Newton step leaves it), with the parameters detached; an element has converged when the
    residual ``|g(x) - y|`` or the Newton correction is below ``tol`` (default ``32 eps`` of the dtype:
    round-off in float32, about ``7e-15`` in float64). If some element has not converged after
    ``max_iter`` iterations a ``RuntimeError`` reports the largest residual. A final Newton step
    whose value is exactly zero carries the implicit-function gradients (``dx/dy = 1/g'(x)``).
    """

    n_mixture: int = attrs.field(validator=attrs.validators.ge(1))
    max_iter: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    tol: float | None = None
    #: Iterations between two convergence checks (each check synchronises with the device).
    check_every: int = 4

    @property
    def n_params(self) -> int:
        return self.n_mixture + 1

    @staticmethod
    def _terms(x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        # u = e^{s/2} sin(x/2), v = e^{-s/2} cos(x/2), shape (K, *S)
        half = 0.5 * x
        e = torch.exp(0.5 * s)
        return e * torch.sin(half), torch.cos(half) / e

    def _mixture(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``g(x)`` (in ``[-pi, pi]`` for ``x`` there; ``g(x + 2 pi) = g(x) ± 2 pi``) and ``log g'(x)``."""
        u, v = self._terms(x, s)
        g = torch.atan2(u, v).mean(0) * 2.0
        return g, _log_mean_exp(torch.log(torch.hypot(u, v)) * -2.0)

    def displacement(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return _NCPDisplacement.apply(x, params, self)

    def displacement_with_state(
        self, x: Tensor, params: Tensor, need_state: bool = True
    ) -> tuple[Tensor, Tensor, tuple]:
        s, t = params[:-1], params[-1]
        half = 0.5 * x
        e = torch.exp(0.5 * s)
        u = e * torch.sin(half)
        v = torch.cos(half) / e
        g = torch.atan2(u, v).sum(0)
        log_dk = torch.log(torch.hypot(u, v)).mul_(-2.0)  # log theta_k'(x) = -log D_k
        logd = _log_mean_exp(log_dk)
        return torch.add(t, g, alpha=2.0 / s.shape[0]).sub_(x), logd, (v, log_dk, logd)

    def displacement_vjp(
        self, x: Tensor, params: Tensor, state: tuple, grad_d: Tensor, grad_logd: Tensor
    ) -> tuple[Tensor, Tensor]:
        # With D_k = u_k^2 + v_k^2 (theta_k' = 1/D_k), g' = mean_k 1/D_k, w_k = 1/(K g' D_k):
        # dg/dx = g', dg/ds_k = sin(x) g' w_k, d log g'/dx = -sin(x) sum_k w_k sinh(s_k)/D_k,
        # d log g'/ds_k = -w_k (u_k^2 - v_k^2)/D_k = -w_k (1 - 2 v_k^2/D_k), and d/dt = 1 for the shift.
        v, log_dk, logd = state
        inv_D = torch.exp(log_dk)
        w = torch.exp(log_dk - (logd + math.log(v.shape[0])))
        slope = torch.exp(logd)
        sin_x = torch.sin(x)
        contrast = (v * v).mul_(inv_D).mul_(-2.0).add_(1.0)
        grad_s = (grad_d * sin_x * slope - grad_logd * contrast).mul_(w)
        curvature = torch.sinh(params[:-1]).mul_(inv_D).mul_(w).sum(0)
        grad_x = torch.addcmul((slope - 1).mul_(grad_d), curvature * sin_x, grad_logd, value=-1.0)
        return grad_x, torch.cat([grad_s, grad_d.unsqueeze(0)])

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        g, logd = self._mixture(x, params[:-1])
        return wrap_exact(g + params[-1]), logd

    def displacement_plain(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        g, logd = self._mixture(x, params[:-1])
        return g + params[-1] - x, logd

    _displacement_reference = displacement_plain

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s, t = params[:-1], params[-1]
        target = wrap(y - t)
        with torch.no_grad():
            x = self._solve(target.detach(), s.detach())
        g, logd = self._mixture(x, s)
        residual = g - target
        # Zero in value; its gradient is that of the exact root (implicit function theorem).
        x = x + (residual.detach() - residual) * torch.exp(-logd.detach())
        return wrap_exact(x), -logd  # the bracket's end pi is -pi

    def _solve(self, target: Tensor, s: Tensor) -> Tensor:
        """The root of ``g(x) = target`` in ``[-pi, pi]``, elementwise (no autograd)."""
        tol = self.tol if self.tol is not None else 32 * torch.finfo(target.dtype).eps
        lo = torch.full_like(target, -math.pi)
        hi = torch.full_like(target, math.pi)
        x = target.clone()
        for it in range(self.max_iter + 1):
            u, v = self._terms(x, s)
            f = torch.atan2(u, v).mean(0).mul_(2.0).sub_(target)
            step = f / (u * u + v * v).reciprocal_().mean(0)
            done = (f.abs() <= tol) | (step.abs() <= tol)
            if it == self.max_iter or (it % self.check_every == self.check_every - 1 and bool(done.all())):
                break
            # g is increasing: the root lies below x where f > 0, above it elsewhere.
            above = f > 0
            hi = torch.where(above, x, hi)
            lo = torch.where(above, lo, x)
            newton = x - step
            inside = (newton > lo) & (newton < hi)  # False for NaN steps too
            x = torch.where(done, x, torch.where(inside, newton, 0.5 * (lo + hi)))
        if not bool(done.all()):
            bad = ~done
            raise RuntimeError(
                f"NCP inverse did not converge in {self.max_iter} iterations: max residual "
                f"{float(f.abs()[bad].max()):.3g} and max Newton step {float(step.abs()[bad].max()):.3g} "
                f"(tolerance {tol:.3g}) at {int(bad.sum())} of {bad.numel()} sites"
            )
        return x


def _log_mean_exp(a: Tensor) -> Tensor:
    """``log mean_k exp(a_k)`` over the first axis, stably (one kernel for two terms)."""
    K = a.shape[0]
    if K == 1:
        return a[0]
    if K == 2:
        return torch.logaddexp(a[0], a[1]) - math.log(2)
    return torch.logsumexp(a, 0) - math.log(K)


class _NCPDisplacement(torch.autograd.Function):
    """:meth:`NCP.displacement` as one autograd node with the derivatives written out
    (:meth:`NCP.displacement_vjp`). Under ``create_graph`` the backward differentiates the plain
    implementation instead, so higher derivatives are exact too."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, ncp: "NCP"):
        d, logd, state = ncp.displacement_with_state(x, params)
        ctx.save_for_backward(x, params, *state)
        ctx.ncp = ncp
        return d, logd

    @staticmethod
    def backward(ctx, grad_d: Tensor, grad_logd: Tensor):
        x, params, *state = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate a differentiable recomputation
            need = ctx.needs_input_grad[:2]
            wanted = [a for a, n in zip((x, params), need) if n]
            with torch.enable_grad():
                outs = ctx.ncp._displacement_reference(x, params)
            found = iter(torch.autograd.grad(outs, wanted, (grad_d, grad_logd), create_graph=True, allow_unused=True))
            return (next(found) if need[0] else None), (next(found) if need[1] else None), None
        grad_x, grad_params = ctx.ncp.displacement_vjp(x, params, tuple(state), grad_d, grad_logd)
        return grad_x, grad_params, None


def rational_quadratic_root(dy: Tensor, h: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
    """``xi`` in ``[0, 1]`` where a rational-quadratic bin rises by ``dy``: the inverse of one bin.

    The bin has height ``h``, slope ``s = h / w`` and knot derivatives ``d0, d1``; its value at ``xi`` is
    ``h (s xi^2 + d0 xi (1 - xi)) / (s + (d0 + d1 - 2 s) xi (1 - xi))`` (Durkan et al., arXiv:1906.04032).
    All arguments broadcast together; the result has their shape. ``xi`` is the root of
    ``a xi^2 + b xi + c = 0`` in the form without cancellation for the sign of ``b``: its error times
    ``h'`` is within a few hundred ``eps`` of the dtype at raw parameter scales up to 10, near either
    knot (``tests/test_rq_root.py``). ``dy`` outside ``[0, h]`` (round-off) would give ``xi`` outside
    ``[0, 1]``; the result is clamped to it.
    """
    c2 = d0 + d1 - 2 * s
    a = h * (s - d0) + dy * c2
    b = h * d0 - dy * c2
    c = -s * dy
    sqrt_disc = torch.sqrt((b * b - 4 * a * c).clamp(min=0))
    # The root in [0, 1] is (-b + sqrt(disc)) / (2a) = 2c / (-b - sqrt(disc)). With c <= 0, the first
    # form cancels when b > 0 and the second when b < 0 (near the right knot), so each sign of b takes
    # the form that adds two terms of one sign (Durkan et al., appendix A; Press et al., Numerical
    # Recipes, section 5.6). Where b < 0 the root in [0, 1] needs a >= -b > 0, so 2a does not vanish;
    # b >= 0 makes -b - sqrt(disc) < 0 unless b = c = 0, which happens only at dy = 0 of a degenerate bin.
    # Each form's denominator is replaced by a harmless 1 where the other form is taken, so that neither
    # branch of the where makes an inf or NaN (whose zero gradient would still be NaN under autograd).
    low = b >= 0
    stable_low = 2 * c / torch.where(low, -b - sqrt_disc, 1.0)
    stable_high = (sqrt_disc - b) / torch.where(low, 1.0, 2 * a)
    return torch.where(low, stable_low, stable_high).clamp(0, 1)


@attrs.frozen(kw_only=True)
class CircularSpline(CircleMap):
    """A circular rational-quadratic spline with ``n_bins`` bins on ``[-pi, pi]``, then a shift ``t``.

    Params ``(w_1..w_K, h_1..h_K, d_1..d_K, t)``: bin widths and heights are ``softmax`` of the raw
    values (each at least ``min_bin`` of ``2 pi``); the knot derivatives are ``min_derivative +
    softplus``, shifted so that a raw 0 gives 1, and the derivative at ``-pi`` is the one at ``pi``
    (``K`` derivatives for ``K + 1`` knots), so ``h`` is a ``C^1`` diffeomorphism of the circle. Zero
    parameters give the identity. The inverse solves the quadratic of the bin in closed form.
    """

    n_bins: int = attrs.field(validator=attrs.validators.ge(2))
    min_bin: float = 1e-3
    min_derivative: float = 1e-3

    @property
    def n_params(self) -> int:
        return 3 * self.n_bins + 1

    # Everything stays parameter-first, (K, *S): each bin is a contiguous slice, so the softmax,
    # cumulative sums, bin search and gathers are elementwise loops over the sites. Per site, with the
    # bin's left knots (x_0, y_0), width w, height h, slope s = h/w, knot derivatives d_0, d_1,
    # xi = (x - x_0)/w, D = s + (d_0 + d_1 - 2s) xi (1 - xi), A = s xi^2 + d_0 xi (1 - xi) and
    # N = d_1 xi^2 + 2 s xi (1 - xi) + d_0 (1 - xi)^2:  y = y_0 + h A/D + t, y' = s^2 N/D^2.

    def _tables(self, params: Tensor) -> tuple[Tensor, ...]:
        """``(softmax of widths, of heights, widths, heights, raw derivatives, derivatives)``, each ``(K, *S)``."""
        K = self.n_bins
        sm_w = torch.softmax(params[:K], dim=0)
        sm_h = torch.softmax(params[K : 2 * K], dim=0)
        scale = 1 - self.min_bin * K
        widths = (sm_w * scale + self.min_bin) * (2 * math.pi)
        heights = (sm_h * scale + self.min_bin) * (2 * math.pi)
        raw_d = params[2 * K : 3 * K] + math.log(math.expm1(1 - self.min_derivative))
        return sm_w, sm_h, widths, heights, raw_d, F.softplus(raw_d) + self.min_derivative

    def _bin(self, sizes: Tensor, value: Tensor, others: Tensor) -> tuple[Tensor, ...]:
        """The bin of ``value`` on the knots ``-pi + cumsum(sizes)``: ``(bin index (1, *S), index of the
        next knot's derivative, left knot, size, left knot of the other axis, its size)``."""
        K = self.n_bins
        right_knots = torch.cumsum(sizes, dim=0).sub_(math.pi)  # the last one is pi up to round-off
        idx = (right_knots[:-1] <= value).sum(0, keepdim=True)
        nxt = torch.where(idx == K - 1, 0, idx + 1)
        size, other = sizes.gather(0, idx).squeeze(0), others.gather(0, idx).squeeze(0)
        start = right_knots.gather(0, idx).squeeze(0) - size
        other_start = torch.cumsum(others, dim=0).gather(0, idx).squeeze(0).sub_(math.pi) - other
        return idx, nxt, start, size, other_start, other

    @staticmethod
    def _log_derivative(xi, s, d0, d1, D) -> tuple[Tensor, Tensor]:
        """``(log y', N)``."""
        one_minus = 1 - xi
        N = d1 * xi * xi + 2 * s * xi * one_minus + d0 * one_minus * one_minus
        return 2 * torch.log(s) + torch.log(N) - 2 * torch.log(D), N

    def displacement(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        d, logd, _ = self.displacement_with_state(x, params, need_state=False)
        return d, logd

    def displacement_with_state(
        self, x: Tensor, params: Tensor, need_state: bool = True
    ) -> tuple[Tensor, Tensor, tuple]:
        # Plain tensor operations: autograd differentiates them to any order when the inputs require
        # gradients (the reference path); the fused layers use displacement_vjp instead.
        sm_w, sm_h, widths, heights, raw_d, dvec = self._tables(params)
        x = wrap(x)
        idx, nxt, x0, w, y0, h = self._bin(widths, x, heights)
        d0, d1 = dvec.gather(0, idx).squeeze(0), dvec.gather(0, nxt).squeeze(0)
        s = h / w
        xi = (x - x0) / w
        xi1 = xi * (1 - xi)
        D = s + (d0 + d1 - 2 * s) * xi1
        A = s * xi * xi + d0 * xi1
        disp = y0 + h * A / D + params[-1] - x
        logd, N = self._log_derivative(xi, s, d0, d1, D)
        state = (idx, nxt, sm_w, sm_h, raw_d, w, h, s, xi, d0, d1, D, A, N, logd) if need_state else ()
        return disp, logd, state

    def displacement_shared(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`displacement` for one parameter vector ``params`` ``(n_params,)`` shared by every site of ``x``
        ``(*S)``: the bin tables are built once (``(K,)``, not ``(K, *S)``) and each site only finds its bin
        (``searchsorted``) and evaluates it, so a context-free layer costs a few elementwise passes over the
        sites. The same numbers as :meth:`displacement` with ``params`` expanded to every site (to rounding);
        autograd follows both ``x`` and ``params``."""
        if params.shape != (self.n_params,):
            raise ValueError(f"CircularSpline.displacement_shared: params must be ({self.n_params},), got {tuple(params.shape)}")
        K = self.n_bins
        # the tables of one site, (K, 1): the same reductions as displacement's (K, *S) ones, to the bit
        _, _, widths, heights, _, dvec = (t.squeeze(1) for t in self._tables(params.view(-1, 1)))
        x = wrap(x)
        right_x = torch.cumsum(widths.view(-1, 1), dim=0).sub_(math.pi).squeeze(1)
        right_y = torch.cumsum(heights.view(-1, 1), dim=0).sub_(math.pi).squeeze(1)
        idx = torch.searchsorted(right_x[:-1].contiguous(), x.contiguous(), right=True)
        nxt = torch.where(idx == K - 1, 0, idx + 1)
        w, h = widths[idx], heights[idx]
        x0, y0 = right_x[idx] - w, right_y[idx] - h
        d0, d1 = dvec[idx], dvec[nxt]
        s = h / w
        xi = (x - x0) / w
        xi1 = xi * (1 - xi)
        D = s + (d0 + d1 - 2 * s) * xi1
        A = s * xi * xi + d0 * xi1
        logd, _ = self._log_derivative(xi, s, d0, d1, D)
        return y0 + h * A / D + params[-1] - x, logd

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        _, _, widths, heights, _, dvec = self._tables(params)
        y = wrap(y - params[-1])
        idx, nxt, y0, h, x0, w = self._bin(heights, y, widths)
        d0, d1 = dvec.gather(0, idx).squeeze(0), dvec.gather(0, nxt).squeeze(0)
        s = h / w
        # y - y0 may exceed h (or fall below 0) by round-off of the knots; near a knot of small
        # derivative that would put the root far outside the bin, so rational_quadratic_root holds it in [0, 1]
        xi = rational_quadratic_root(y - y0, h, s, d0, d1)
        logd, _ = self._log_derivative(xi, s, d0, d1, s + (d0 + d1 - 2 * s) * xi * (1 - xi))
        return wrap_exact(x0 + xi * w), -logd

    def displacement_vjp(
        self, x: Tensor, params: Tensor, state: tuple, grad_d: Tensor, grad_logd: Tensor
    ) -> tuple[Tensor, Tensor]:
        idx, nxt, sm_w, sm_h, raw_d, w, h, s, xi, d0, d1, D, A, N, logd = state
        K = self.n_bins
        gl = grad_logd.expand_as(xi)
        one_minus = 1 - xi
        xi1 = xi * one_minus
        lin = 1 - 2 * xi
        inv_D, inv_N = 1 / D, 1 / N
        hD2 = h * inv_D * inv_D
        # derivatives of y and log y' by (xi, s, d_0, d_1) at fixed h, then by h
        c = d0 + d1 - 2 * s
        g_xi = grad_d * w * torch.exp(logd) + gl * (2 * (d1 * xi + s * lin - d0 * one_minus) * inv_N - 2 * c * lin * inv_D)
        g_s = grad_d * hD2 * (xi * xi * D - A * (1 - 2 * xi1)) + gl * (2 / s + 2 * xi1 * inv_N - 2 * (1 - 2 * xi1) * inv_D)
        g_d0 = grad_d * hD2 * xi1 * (D - A) + gl * (one_minus * one_minus * inv_N - 2 * xi1 * inv_D)
        g_d1 = gl * (xi * xi * inv_N - 2 * xi1 * inv_D) - grad_d * hD2 * A * xi1
        # xi = (x - x_0)/w and s = h/w
        g_x0 = -g_xi / w
        g_w = g_x0 * xi - g_s * s / w
        g_h = grad_d * A * inv_D + g_s / w
        # back to the bin tables (K, *S): x_0 = -pi + sum_{j < k} width_j, y_0 likewise, d_K = d_0
        bins = torch.arange(K, device=x.device).view(K, *([1] * xi.dim()))
        below = (bins < idx).to(x.dtype)
        here = (bins == idx).to(x.dtype)
        g_widths = below * g_x0 + here * g_w
        g_heights = below * grad_d + here * g_h
        g_dvec = here * g_d0 + (bins == nxt).to(x.dtype) * g_d1
        scale = 2 * math.pi * (1 - self.min_bin * K)

        def softmax_vjp(sm: Tensor, g: Tensor) -> Tensor:
            return (g - (g * sm).sum(0, keepdim=True)).mul_(sm).mul_(scale)

        g_params = torch.cat(
            [softmax_vjp(sm_w, g_widths), softmax_vjp(sm_h, g_heights), g_dvec * torch.sigmoid(raw_d), grad_d.unsqueeze(0)]
        )
        return -g_x0 - grad_d, g_params

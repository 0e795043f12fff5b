"""``u1_plaquette_poisson``: every plaquette through one learned circle map, the links through a Poisson solve.

In 2D U(1) the plaquettes are independent on an infinite lattice: the exact distribution is
``prod_P exp(beta cos x_P)``. On the torus only one thing couples them, the constraint that the
plaquette angles sum to ``2 pi Q``. This flow therefore moves *all* plaquettes at once, through one
increasing diffeomorphism ``h`` of the circle (a rational-quadratic spline with ``n_bins`` bins,
shared by every site), and spreads the constraint evenly over the lattice:

1. ``u_P = x_P(z)``, the plaquette angles of the input, wrapped into ``[-pi, pi)``;
2. ``theta_P = h(u_P)``; ``c = mean_P (theta_P - u_P)``; ``r_P = theta_P - u_P - c`` (so ``sum_P r_P = 0``);
3. the links move by ``delta``, the Coulomb-gauge solution of ``curl delta = r``:
   ``delta_0(n) = psi(n) - psi(n - e_1)``, ``delta_1(n) = psi(n - e_0) - psi(n)`` with ``-Laplacian psi = r``,
   solved by FFT (the lattice Laplacian of the dual sites, zero mode dropped);
4. ``x = z + delta``: every plaquette of ``x`` is ``h(u_P) - c`` (mod ``2 pi``).

**Log-determinant.** With ``C = dx_P/dz`` (the curl) and ``D = d delta/d u``, ``det(1 + D C) =
det(1 + C D)`` (Sylvester), and ``C D = dr/du = diag(h' - 1) - (1/V) 1 (h' - 1)^T``. The matrix
determinant lemma then gives

    log|det dx/dz| = sum_P log h'(u_P) + log mean_P 1/h'(u_P).

**Why this flow.** If ``h`` maps the uniform distribution to the von Mises distribution ``exp(beta cos
theta)`` (``von_mises_beta = beta``), the flow is exact in infinite volume, and FTHMC's latent action
``S(f(z)) - log det`` is flat except for the global mode ``c``. The latent plaquettes ``u_P`` then move
freely through ``±pi``, and each passage changes the topological charge of ``x``: topology is no
longer frozen at large ``beta``. The price is that ``h'`` is large near ``u = ±pi`` (about
``I_0(beta) e^beta``, 27000 at ``beta = 6``), so the latent force is stiff in narrow regions.
The spline can be trained from that start (or from the identity) by the usual reverse KL loss; on a
finite torus its optimum differs slightly from the infinite-volume map.

This uses a property of 2D abelian gauge theory (independent plaquettes), so it does not carry over
to 4D or non-abelian theories; the coupling flows (:mod:`.coupling`, :mod:`.stout`) are the general
ones.

**Symmetries.** Plaquettes are gauge invariant and ``delta`` depends only on them, so ``f(g.z) =
g.f(z)`` exactly. Every step is translation invariant. Weights know no lattice size (the Laplacian's
inverse is a non-persistent buffer), so a flow trained on 8x8 runs on 16x16.

**Inverse.** Given ``x``: with ``theta_P = wrap(x_P + c)`` and ``u_P = h^{-1}(theta_P)``, ``c`` solves
``g(c) = c - mean_P (theta_P - u_P) = 0``; ``g`` is continuous and strictly increasing (``g' = mean 1/h'``)
with ``g(-pi) < 0 < g(pi)``, so a safeguarded Newton iteration finds the unique root. Then ``r`` and
``delta`` follow as above and ``z = x - delta``. The inverse is used only to start FTHMC from given
fields, never per trajectory.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import ClassVar, Sequence

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from lattice_flows import Flow
from lattice_flows.errors import ParameterError
from lattice_flows.params import integer, real

from ..geometry import plaquette_angles, shift
from .circle_maps import CircularSpline, pi_of, rational_quadratic_root, wrap_exact

__all__ = ["PlaquettePoissonFlow", "SharedCircleSpline", "von_mises_spline_logits", "coulomb_links"]


def _von_mises_cdf(beta: float, grid: np.ndarray) -> np.ndarray:
    """CDF of ``exp(beta cos t)`` on ``[-pi, pi]`` at the points of ``grid`` (trapezoid rule)."""
    density = np.exp(beta * (np.cos(grid) - 1))  # scaled by exp(-beta): no overflow
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    return cdf / cdf[-1]


def _log_i0(beta: float) -> float:
    """``log I_0(beta) = beta + log i0e(beta)``, finite for any ``beta``."""
    return abs(beta) + math.log(float(torch.special.i0e(torch.tensor(float(beta), dtype=torch.float64))))


def von_mises_spline_logits(beta: float, n_bins: int, latent_beta: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw ``(widths, heights, slopes)`` of a spline close to the map from von Mises(``latent_beta``) to von Mises(``beta``).

    The map ``h = F_beta^{-1}(F_latent)`` sends an angle ``u`` of density ``exp(latent_beta cos u)``
    (uniform when ``latent_beta = 0``) to ``theta`` of density ``exp(beta cos theta)``. Knots sit at
    equally spaced ``theta_k = -pi + 2 pi k / K`` and at ``u_k = F_latent^{-1}(F_beta(theta_k))`` (the CDFs
    integrated numerically on a fine grid), with the exact slopes ``dh/du = p_latent(u_k) / p_beta(theta_k)``.
    ``beta = latent_beta`` gives the identity. Returns three new float64 arrays of length ``n_bins``
    (computed once per arguments: the spec check of :class:`PlaquettePoissonFlow.Config` and the flow's
    construction both need them).
    """
    return tuple(a.copy() for a in _von_mises_spline_logits(float(beta), int(n_bins), float(latent_beta)))


@functools.lru_cache(maxsize=16)
def _von_mises_spline_logits(beta: float, n_bins: int, latent_beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`von_mises_spline_logits`, cached: its arrays must not be changed."""
    if beta == latent_beta:
        return np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    grid = np.linspace(-math.pi, math.pi, 2**20 + 1)
    knots = np.linspace(-math.pi, math.pi, n_bins + 1)
    u_knots = np.interp(np.interp(knots, grid, _von_mises_cdf(beta, grid)), _von_mises_cdf(latent_beta, grid), grid)
    u_knots[0], u_knots[-1] = -math.pi, math.pi
    log_slopes = (latent_beta * np.cos(u_knots[:-1]) - _log_i0(latent_beta)) - (beta * np.cos(knots[:-1]) - _log_i0(beta))
    return np.log(np.diff(u_knots)), np.zeros(n_bins), log_slopes


class SharedCircleSpline(nn.Module):
    """One rational-quadratic spline ``h`` of the circle, applied elementwise to angles of any shape.

    Parameters (each ``(n_bins,)``): ``width_logits`` and ``height_logits`` (bin sizes are
    ``2 pi softmax``), and ``log_slopes`` (the logs of the derivatives at the knots from ``-pi`` on;
    the one at ``pi`` is the one at ``-pi``, so ``h`` is ``C^1`` on the circle). ``h(±pi) = ±pi``. All zeros is
    the identity. ``forward(u) -> (h(u), log h'(u))`` and ``inverse(theta) -> (h^{-1}(theta), log h'(h^{-1}(theta)))``
    take angles in ``[-pi, pi)`` (any real input is wrapped first, by :func:`.circle_maps.wrap_exact`) and
    return angles in the closed ``[-pi, pi]``, exactly (``pi`` rounded to the dtype): ``h(u)`` for ``u`` just
    below ``pi`` may round to ``pi`` itself, and is kept there rather than wrapped to ``-pi``, so that
    ``h(u) - u`` stays continuous (the flow spreads that difference over the lattice).
    The formulas are those of Durkan et al., arXiv:1906.04032 (see :class:`.circle_maps.CircularSpline`).
    """

    def __init__(self, n_bins: int):
        super().__init__()
        self.n_bins = n_bins
        self.width_logits = nn.Parameter(torch.zeros(n_bins))
        self.height_logits = nn.Parameter(torch.zeros(n_bins))
        self.log_slopes = nn.Parameter(torch.zeros(n_bins))

    def tables(self, dtype, device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(u knots (K + 1,), theta knots (K + 1,), widths (K,), heights (K,), slopes (K + 1,))``."""
        def knots(sizes):
            edges = torch.cumsum(sizes, 0) - math.pi
            return torch.cat([edges.new_full((1,), -math.pi), edges[:-1], edges.new_full((1,), math.pi)])

        w = torch.softmax(self.width_logits.to(dtype=dtype, device=device), 0) * (2 * math.pi)
        h = torch.softmax(self.height_logits.to(dtype=dtype, device=device), 0) * (2 * math.pi)
        d = torch.exp(self.log_slopes.to(dtype=dtype, device=device))
        return knots(w), knots(h), w, h, torch.cat([d, d[:1]])

    @staticmethod
    def _bin(tables: tuple[Tensor, ...], value: Tensor, axis: int) -> tuple[Tensor, ...]:
        """``(x_0, y_0, w, h, d_0, d_1)`` of the bin holding ``value``; ``axis`` 0 searches the ``u`` knots, 1 the ``theta`` knots."""
        ux, uy, w, h, d = tables
        edges = (ux, uy)[axis]
        k = torch.searchsorted(edges[1:-1].contiguous(), value.detach().contiguous(), right=True)
        return ux[k], uy[k], w[k], h[k], d[k], d[k + 1]

    @staticmethod
    def _closed(angle: Tensor) -> Tensor:
        """``angle`` (in ``[-pi, pi]`` up to the round-off of a knot) clamped into ``[-pi, pi]`` of its dtype."""
        pi = pi_of(angle.dtype)
        return angle.clamp(-pi, pi)

    def forward(self, u: Tensor, *, wrapped: bool = False) -> tuple[Tensor, Tensor]:
        """``(h(u), log h'(u))``; ``wrapped=True`` skips the wrap for ``u`` already in ``[-pi, pi)`` exactly."""
        u = u if wrapped else wrap_exact(u)
        x0, y0, wk, hk, d0, d1 = self._bin(self.tables(u.dtype, u.device), u, 0)
        s = hk / wk
        xi = ((u - x0) / wk).clamp(0, 1)
        xi1 = xi * (1 - xi)
        D = s + (d0 + d1 - 2 * s) * xi1
        theta = y0 + hk * (s * xi * xi + d0 * xi1) / D
        return self._closed(theta), CircularSpline._log_derivative(xi, s, d0, d1, D)[0]

    def inverse(self, theta: Tensor, *, wrapped: bool = False) -> tuple[Tensor, Tensor]:
        """``(h^{-1}(theta), log h'(h^{-1}(theta)))``; ``wrapped`` as in :meth:`forward`."""
        theta = theta if wrapped else wrap_exact(theta)
        x0, y0, wk, hk, d0, d1 = self._bin(self.tables(theta.dtype, theta.device), theta, 1)
        s = hk / wk
        xi = rational_quadratic_root(theta - y0, hk, s, d0, d1)
        D = s + (d0 + d1 - 2 * s) * xi * (1 - xi)
        return self._closed(x0 + xi * wk), CircularSpline._log_derivative(xi, s, d0, d1, D)[0]


def _inverse_laplacian(lattice_shape: Sequence[int], dtype=torch.float64) -> Tensor:
    """``1 / (4 - 2 cos p_0 - 2 cos p_1)`` on the ``rfft2`` momenta ``(L_0, L_1 // 2 + 1)``, 0 at ``p = 0``."""
    L0, L1 = lattice_shape
    p0 = 2 * math.pi * torch.arange(L0, dtype=torch.float64) / L0
    p1 = 2 * math.pi * torch.arange(L1 // 2 + 1, dtype=torch.float64) / L1
    lam = 4 - 2 * torch.cos(p0)[:, None] - 2 * torch.cos(p1)[None, :]
    lam[0, 0] = 1.0
    inv = 1 / lam
    inv[0, 0] = 0.0
    return inv.to(dtype)


def coulomb_links(r: Tensor, inverse_laplacian: Tensor) -> Tensor:
    """Link angles ``delta`` ``(B, 2, L_0, L_1)`` with ``curl delta = r`` for ``r`` ``(B, L_0, L_1)`` of zero sum.

    ``delta_0(n) = psi(n) - psi(n - e_1)``, ``delta_1(n) = psi(n - e_0) - psi(n)``, ``-Laplacian psi = r``
    (then ``x_P`` of ``delta`` is ``4 psi(n) - sum_{±mu} psi(n ± e_mu) = r``). ``inverse_laplacian``
    from :func:`_inverse_laplacian`.
    """
    psi = torch.fft.irfft2(torch.fft.rfft2(r) * inverse_laplacian, s=r.shape[-2:])
    return torch.stack((psi - shift(psi, 1, -1), shift(psi, 0, -1) - psi), dim=1)


class PlaquettePoissonFlow(Flow):
    """Every plaquette through one learned circle map, the links through a Poisson solve; see the module docstring.

    ``forward(z) -> (x, log|det dx/dz|)``, ``inverse(x) -> (z, log|det dz/dx|)`` on link angles
    ``(B, 2, L_0, L_1)``, log-dets ``(B,)``; outputs in ``[-pi, pi)`` exactly (:func:`.circle_maps.wrap_exact`).
    Any 2D lattice with both sizes at least 2.

    Example:
        >>> import torch
        >>> flow = PlaquettePoissonFlow(PlaquettePoissonFlow.Config(), (4, 4)).double()
        >>> z = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 6 - 3
        >>> x, logdet = flow(z)  # von_mises_beta = 0: the identity
        >>> float((x - z).abs().max()) < 1e-12, float(logdet.abs().max()) < 1e-12
        (True, True)
    """

    theory: ClassVar[str] = "u1"
    example_params: ClassVar[dict] = {"n_bins": 8}
    #: Default cap on the Newton iterations for ``c`` in :meth:`inverse`.
    max_iterations: ClassVar[int] = 100

    @attrs.frozen(kw_only=True)
    class Config:
        """Spec parameters of ``u1_plaquette_poisson``."""

        n_bins: int = integer(
            help="bins of the rational-quadratic spline shared by every plaquette (at most 2^20: the initial spline "
            "is built on a grid of 2^20 intervals, finer bins would have no width)",
            default=128, ge=2, le=2**20,
        )
        von_mises_beta: float = real(
            help="start as the map from uniform plaquettes to exp(beta cos x_P) (exact in infinite volume); "
            "0 starts as the identity; at most 1e4 (u1_wilson's largest beta), and small enough that the outer bins of "
            "the initial spline stay resolved in float64 (about 15 with 128 bins and latent_beta 0: checked)",
            default=0.0, ge=0.0, le=1e4,
        )
        latent_beta: float = real(
            help="with von_mises_beta: start as the map from exp(latent_beta cos u) to exp(von_mises_beta cos x_P) "
            "instead of from uniform plaquettes (a larger value makes the latent force softer and topology slower); "
            "at most 1e4",
            default=0.0, ge=0.0, le=1e4,
        )

        def __attrs_post_init__(self):
            # a large von_mises_beta squeezes the outer bins of the initial spline below float64's
            # resolution (a width of exactly 0: log 0 = -inf weights, NaN fields); the limit depends on
            # n_bins and latent_beta (about 15 with the defaults), so it is checked on the spline itself
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                widths, _, slopes = von_mises_spline_logits(self.von_mises_beta, self.n_bins, self.latent_beta)
            if not (np.isfinite(widths).all() and np.isfinite(slopes).all()):
                raise ParameterError(
                    "von_mises_beta",
                    f"the initial spline from latent_beta = {self.latent_beta:g} to von_mises_beta = "
                    f"{self.von_mises_beta:g} with n_bins = {self.n_bins} has bins narrower than float64 resolves "
                    "(non-finite weights); use a smaller von_mises_beta, a latent_beta closer to it, or fewer bins",
                )

    def __init__(self, config: Config, lattice_shape: Sequence[int]):
        self.check_lattice(lattice_shape)
        super().__init__(config, lattice_shape)
        self.spline = SharedCircleSpline(config.n_bins)
        widths, heights, slopes = von_mises_spline_logits(config.von_mises_beta, config.n_bins, config.latent_beta)
        with torch.no_grad():
            self.spline.width_logits.copy_(torch.from_numpy(widths))
            self.spline.height_logits.copy_(torch.from_numpy(heights))
            self.spline.log_slopes.copy_(torch.from_numpy(slopes))
        self.register_buffer("inverse_laplacian", _inverse_laplacian(self.lattice_shape), persistent=False)

    @classmethod
    def check_lattice(cls, lattice_shape: Sequence[int]) -> None:
        shape = list(lattice_shape)
        if len(shape) != 2 or any(not isinstance(s, numbers.Integral) or s < 2 for s in shape):
            raise ValueError(f"u1_plaquette_poisson needs a 2D lattice with both sizes at least 2, got {shape}")

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (2, *self.lattice_shape):
            raise ValueError(
                f"u1_plaquette_poisson built for links (B, 2, {self.lattice_shape[0]}, {self.lattice_shape[1]}), "
                f"got a tensor of shape {tuple(x.shape)}"
            )

    def _shift_links(self, r: Tensor) -> Tensor:
        return coulomb_links(r, self.inverse_laplacian.to(r.dtype))

    @staticmethod
    def _logdet(log_slope: Tensor) -> Tensor:
        """``sum log h' + log mean 1/h'`` over the sites, ``(B,)``."""
        flat = log_slope.flatten(1)
        return flat.sum(1) + torch.logsumexp(-flat, 1) - math.log(flat.shape[1])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(z)
        u = wrap_exact(plaquette_angles(z))
        theta, log_slope = self.spline(u, wrapped=True)
        moved = theta - u
        r = moved - moved.mean(dim=(1, 2), keepdim=True)
        return wrap_exact(z + self._shift_links(r)), self._logdet(log_slope)

    def _residual(self, c: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(c), g'(c))`` for the plaquettes ``p`` of ``x`` and shifts ``c`` ``(B, 1, 1)``."""
        theta = wrap_exact(p + c)
        u, log_slope = self.spline.inverse(theta, wrapped=True)
        g = c - (theta - u).mean(dim=(1, 2), keepdim=True)
        return g, torch.exp(-log_slope).mean(dim=(1, 2), keepdim=True)

    def inverse(self, x: Tensor, *, max_iterations: int | None = None) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)``. Raises ``RuntimeError`` if the shift ``c`` has not converged.

        ``c`` is found to ``|g(c)| <= 64 eps`` of the dtype by Newton's method inside a shrinking
        bracket (bisection when a step leaves it), with the spline detached; the result is not
        differentiable with respect to ``c`` (the inverse only starts chains).
        """
        self._check_input(x)
        cap = self.max_iterations if max_iterations is None else max_iterations
        tol = 64 * torch.finfo(x.dtype).eps
        p = wrap_exact(plaquette_angles(x))
        with torch.no_grad():
            lo = p.new_full((p.shape[0], 1, 1), -math.pi)
            hi = p.new_full((p.shape[0], 1, 1), math.pi)
            c = torch.zeros_like(lo)
            for _ in range(cap):
                g, slope = self._residual(c, p)
                if bool((g.abs() <= tol).all()):
                    break
                lo = torch.where(g < 0, c, lo)
                hi = torch.where(g > 0, c, hi)
                newton = c - g / slope
                c = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
            else:
                g, _ = self._residual(c, p)
                worst = float(g.abs().max())
                if worst > tol:
                    raise RuntimeError(
                        f"u1_plaquette_poisson inverse did not converge in {cap} iterations: "
                        f"max residual {worst:.3g} > tolerance {tol:.3g} ({x.dtype})"
                    )
        theta = wrap_exact(p + c)
        u, log_slope = self.spline.inverse(theta, wrapped=True)
        r = theta - u - c
        return wrap_exact(x - self._shift_links(r)), -self._logdet(log_slope)

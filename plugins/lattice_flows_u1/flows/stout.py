"""``u1_stout``: smooth, stout-like field transformations of 2D U(1) links (Jin, arXiv:2201.01862).

Each layer updates a subset of the links, the *active* links ``x_mu(n)`` of one direction ``mu``,

    x_mu(n) -> y_mu(n) = x_mu(n) + sum_k eps_k(n) sin(W_k(n)),

where ``W_k(n)`` runs over the Wilson loops containing the link, oriented so that
``dW_k(n)/dx_mu(n) = +1``: the two plaquettes and, with ``rectangles``, also the six ``1x2`` and
``2x1`` rectangles. Writing ``W_k(n) = x_mu(n) + c_k(n)``, the ``c_k`` hold only frozen links (see the
masks below), so each active link goes through its own map of the circle

    y = x + sum_k eps_k sin(x + c_k),    dy/dx = 1 + sum_k eps_k cos(x + c_k).

The coefficients ``eps_k(n) = (max_coefficient / K) tanh(a_k(n))``, ``K`` the number of loops per link,
come from a convolutional net (circular padding) whose inputs ``cos x_P, sin x_P`` are taken only on
the *frozen* plaquettes, those that contain no active link. Hence ``sum_k |eps_k| <= max_coefficient < 1``
and ``dy/dx >= 1 - max_coefficient > 0``: every 1D map is a strictly increasing bijection of the
circle, and the layer is invertible. Because no loop of an active link contains another active link,
the Jacobian of a layer is triangular with the active block diagonal, so

    log|det dy/dx| = sum_{active (mu, n)} log(1 + sum_k eps_k(n) cos W_k(n)).

The inverse solves each 1D equation by Newton's method safeguarded by bisection inside the bracket
``|x - y| <= sum_k |eps_k|``, followed by one Newton step under autograd so that gradients of the
inverse are correct. Loops and plaquettes are gauge invariant, so ``f(g.z) = g.f(z)`` exactly (modulo
``2 pi``, as the output is wrapped into ``[-pi, pi)``). Nets that start at zero make every ``eps_k = 0``:
a new flow is the identity.

Masks (``nu = 1 - mu``; ``o`` the layer's offset, ``0..3``; ``L_0, L_1`` multiples of 4):

- plaquettes only: ``x_mu(n)`` is active where ``n_nu = o (mod 4)``, a stripe of every fourth row, as in
  the plaquette couplings of Kanwar et al.; the double stripe of plaquettes in between is frozen.
- with rectangles: a ``2x1`` rectangle holds two neighbouring ``mu``-links and a ``1x2`` rectangle two
  ``mu``-links two rows apart, so the stripe is thinned into a staggered pattern: ``x_mu(n)`` is active
  where ``n_nu = o_nu (mod 2)`` and ``n_mu = o_mu + (n_nu - o_nu)/2 (mod 2)``, ``o_nu = o mod 2``,
  ``o_mu = o // 2``. Two active links then differ by ``(d_mu, d_nu)`` with ``d_nu`` even and
  ``d_mu = d_nu/2 (mod 2)``, never an offset that a common loop allows (``(±1, 0)``, ``(0, ±2)``, odd ``d_nu``).

Both patterns update a quarter of the ``mu``-links; layer ``i`` takes ``mu = i mod 2`` and
``o = (i // 2) mod 4``, so every period of 8 layers updates each link exactly once.

References: X.-Y. Jin, "Neural network field transformation and its application in HMC",
arXiv:2201.01862; Foreman et al., arXiv:2112.01586; Kanwar et al., arXiv:2003.06413 (masks);
Morningstar and Peardon, hep-lat/0311018 (stout smearing).
"""

from __future__ import annotations

import numbers
from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor, nn

from lattice_flows import Flow
from lattice_flows.nn import ACTIVATIONS, conv_net
from lattice_flows.params import choice, flag, integer, odd_integer, real, widths

from ..geometry import plaquette_angles, shift, wrap

__all__ = ["StoutFlow", "StoutLayer", "active_mask", "frozen_plaquette_mask", "loop_angles", "PERIOD"]

#: Layers after which every link has been updated once (2 directions x 4 offsets).
PERIOD = 8


def active_mask(lattice_shape: Sequence[int], mu: int, offset: int, *, rectangles: bool, device=None) -> Tensor:
    """Bool ``(L_0, L_1)``: True at ``n`` where the link ``x_mu(n)`` is active for this ``offset`` (0..3).

    See the module docstring for the two patterns.
    """
    n = torch.meshgrid(*(torch.arange(size, device=device) for size in lattice_shape), indexing="ij")
    n_mu, n_nu = n[mu], n[1 - mu]
    if not rectangles:
        return (n_nu - offset) % 4 == 0
    o_nu, o_mu = offset % 2, offset // 2
    return ((n_nu - o_nu) % 2 == 0) & ((n_mu - o_mu - (n_nu - o_nu) // 2) % 2 == 0)


def frozen_plaquette_mask(active: Tensor, mu: int) -> Tensor:
    """Bool ``(L_0, L_1)``: True at ``n`` where the plaquette ``x_P(n)`` holds no active ``mu``-link.

    ``x_P(n)`` holds the ``mu``-links at ``n`` and ``n + e_nu``; ``active`` is from :func:`active_mask`.
    """
    return ~active & ~torch.roll(active, shifts=-1, dims=1 - mu)


def loop_angles(p: Tensor, mu: int, *, rectangles: bool) -> Tensor:
    """Angles of the Wilson loops containing ``x_mu(n)``, oriented so that ``dW/dx_mu(n) = +1``.

    ``p``: plaquette angles ``(B, L_0, L_1)`` (:func:`plaquette_angles`). Returns ``(B, K, L_0, L_1)``
    with ``K = 2`` (the plaquettes on the ``+nu`` and ``-nu`` sides) or ``K = 8`` (then the ``2x1``
    rectangles long in ``mu``: ``+nu`` side starting at the link, ending at it, ``-nu`` side likewise;
    and the ``1x2`` rectangles long in ``nu``: ``+nu`` side, ``-nu`` side). A rectangle's angle is the
    sum of its two plaquettes'. Not wrapped.
    """
    nu = 1 - mu
    # x_0(n) enters x_P(n) with +, x_1(n) with -: orient the plaquettes for this direction.
    up = p if mu == 0 else -p
    down = -shift(up, nu, -1)  # the plaquette at n - e_nu, oriented along +x_mu(n)
    loops = [up, down]
    if rectangles:
        loops += [
            up + shift(up, mu, 1),
            up + shift(up, mu, -1),
            down + shift(down, mu, 1),
            down + shift(down, mu, -1),
            up + shift(up, nu, 1),
            down + shift(down, nu, -1),
        ]
    return torch.stack(loops, dim=1)


class StoutLayer(nn.Module):
    """One stout update of the active ``mu``-links; ``forward(x) -> (y, log|det dy/dx|)``, ``(B,)``.

    ``x``: link angles ``(B, 2, L_0, L_1)``; the output is not wrapped (:class:`StoutFlow` wraps).
    The masks are non-persistent buffers, so the ``state_dict`` holds only the (size-free) net:
    ``active`` (bool ``(L_0, L_1)``, the active ``mu``-links), ``frozen`` (``(L_0, L_1)``, 1 on the
    plaquettes that condition the net) and ``eps_scale`` (``max_coefficient / K`` on the active links).
    """

    def __init__(
        self, lattice_shape: Sequence[int], mu: int, offset: int, *, rectangles: bool, max_coefficient: float,
        hidden: Sequence[int], kernel_size: int, activation: str,
    ):
        super().__init__()
        self.mu, self.offset, self.rectangles = mu, offset, rectangles
        self.n_loops = 8 if rectangles else 2
        self.scale = max_coefficient / self.n_loops
        active = active_mask(lattice_shape, mu, offset, rectangles=rectangles)
        dtype = torch.get_default_dtype()  # float buffers: cast with the module, so no per-call conversion
        self.register_buffer("active", active, persistent=False)
        self.register_buffer("eps_scale", active.to(dtype) * self.scale, persistent=False)
        self.register_buffer("frozen", frozen_plaquette_mask(active, mu).to(dtype), persistent=False)
        self.net = conv_net(2, hidden, self.n_loops, kernel_size=kernel_size, activation=activation)

    def coefficients(self, p: Tensor) -> Tensor:
        """``eps_k(n)``, ``(B, K, L_0, L_1)``, zero off the active links; ``p``: plaquette angles ``(B, L_0, L_1)``."""
        features = torch.stack((torch.cos(p), torch.sin(p)), dim=1) * self.frozen.to(p.dtype)
        return torch.tanh(self.net(features)) * self.eps_scale.to(p.dtype)

    def _replace(self, x: Tensor, x_mu: Tensor) -> Tensor:
        return torch.stack((x_mu, x[:, 1]) if self.mu == 0 else (x[:, 0], x_mu), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = plaquette_angles(x)
        eps = self.coefficients(p)
        loops = loop_angles(p, self.mu, rectangles=self.rectangles)
        y_mu = x[:, self.mu] + (eps * torch.sin(loops)).sum(dim=1)
        slope = 1 + (eps * torch.cos(loops)).sum(dim=1)
        return self._replace(x, y_mu), torch.log(slope).sum(dim=(1, 2))

    def inverse(self, y: Tensor, *, max_iterations: int) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dy|)``. Raises ``RuntimeError`` if the 1D solves have not converged."""
        p = plaquette_angles(y)
        eps = self.coefficients(p)  # from the frozen plaquettes: the same at x as at y
        # With x_mu = y_mu + u the loops at x are W_k(y) + u, so u solves u + sum_k eps_k sin(u + W_k(y)) = 0,
        # an equation in O(1) quantities whatever the size of the (unwrapped) angles.
        w = wrap(loop_angles(p, self.mu, rectangles=self.rectangles))
        with torch.no_grad():
            u = _solve(w.detach(), eps.detach(), max_iterations)
        # One Newton step under autograd: the same point to round-off, with the implicit-function gradient.
        residual, slope = _shift_equation(u, w, eps)
        u = u - residual / slope
        _, slope = _shift_equation(u, w, eps)
        return self._replace(y, y[:, self.mu] + u), -torch.log(slope).sum(dim=(1, 2))


def _shift_equation(u: Tensor, w: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Residual ``u + sum_k eps_k sin(u + w_k)`` and its slope ``1 + sum_k eps_k cos(u + w_k)``."""
    a = u.unsqueeze(1) + w
    return u + (eps * torch.sin(a)).sum(dim=1), 1 + (eps * torch.cos(a)).sum(dim=1)


def _solve(w: Tensor, eps: Tensor, max_iterations: int) -> Tensor:
    """The root ``u`` of :func:`_shift_equation`, elementwise: Newton's method, bisection as a safeguard.

    ``w, eps``: ``(B, K, L_0, L_1)`` with ``sum_k |eps_k| < 1``; returns ``u`` of shape ``(B, L_0, L_1)``.
    Converged when every residual is below ``64`` machine epsilons of the dtype (then
    ``|u - u*| <= residual / (1 - sum_k |eps_k|)``); raises ``RuntimeError`` otherwise.
    """
    tol = 64 * torch.finfo(w.dtype).eps
    reach = eps.abs().sum(dim=1)
    lo, hi = -reach, reach  # |u| <= sum_k |eps_k|
    u = -(eps * torch.sin(w)).sum(dim=1)  # one fixed-point step as the start
    residual, slope = _shift_equation(u, w, eps)
    for _ in range(max_iterations):
        if bool((residual.abs() <= tol).all()):
            return u
        lo = torch.where(residual < 0, u, lo)
        hi = torch.where(residual > 0, u, hi)
        newton = u - residual / slope
        u = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        residual, slope = _shift_equation(u, w, eps)
    worst = float(residual.abs().max())
    if worst <= tol:
        return u
    raise RuntimeError(
        f"u1_stout inverse did not converge in {max_iterations} Newton iterations: "
        f"max residual {worst:.3g} > tolerance {tol:.3g} ({w.dtype})"
    )


class StoutFlow(Flow):
    """Stack of :class:`StoutLayer` s on 2D U(1) links ``(B, 2, L_0, L_1)``; output wrapped into ``[-pi, pi)``.

    ``forward(z) -> (x, log|det dx/dz|)``, ``inverse(x) -> (z, log|det dz/dx|)``, log-dets ``(B,)``.
    See the module docstring for the update, its log-det and the masks. Lattice sizes must be
    multiples of 4.

    Example:
        >>> import torch
        >>> flow = StoutFlow(StoutFlow.Config(n_layers=2, hidden=[4]), (4, 4))
        >>> z = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 6 - 3
        >>> x, logdet = flow.double()(z)  # a new flow is the identity
        >>> bool(torch.equal(x, z)), logdet.tolist()
        (True, [0.0, 0.0, 0.0])
    """

    theory: ClassVar[str] = "u1"
    example_params: ClassVar[dict] = {"n_layers": 2, "hidden": [4], "rectangles": True}
    #: Default cap on the Newton iterations of :meth:`inverse` (a handful suffice).
    max_iterations: ClassVar[int] = 50

    @attrs.frozen(kw_only=True)
    class Config:
        """Spec parameters of ``u1_stout``."""

        n_layers: int = integer(help="number of stout layers (8 update every link once)", default=8, ge=1)
        hidden: tuple[int, ...] = widths(help="channels of the hidden convolutions of each layer's net", default=(8,))
        kernel_size: int = odd_integer(help="odd side of the convolution kernels", default=3)
        activation: str = choice(tuple(ACTIVATIONS), help="activation of the hidden convolutions", default="tanh")
        rectangles: bool = flag(help="also smear along the 1x2 and 2x1 rectangles containing each link", default=False)
        max_coefficient: float = real(
            help="bound on sum_k |eps_k| per link (< 1 keeps every link map strictly increasing)",
            default=0.9, gt=0.0, lt=1.0,
        )

    def __init__(self, config: Config, lattice_shape: Sequence[int]):
        self.check_lattice(lattice_shape)
        super().__init__(config, lattice_shape)
        self.layers = nn.ModuleList(
            StoutLayer(
                self.lattice_shape, i % 2, (i // 2) % 4, rectangles=config.rectangles,
                max_coefficient=config.max_coefficient, hidden=config.hidden,
                kernel_size=config.kernel_size, activation=config.activation,
            )
            for i in range(config.n_layers)
        )

    @classmethod
    def check_lattice(cls, lattice_shape: Sequence[int]) -> None:
        shape = list(lattice_shape)
        if len(shape) != 2 or any(not isinstance(s, numbers.Integral) or s < 4 or s % 4 for s in shape):
            raise ValueError(
                f"u1_stout needs a 2D lattice whose sizes are positive multiples of 4, got {shape}"
            )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet = z, z.new_zeros(z.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return wrap(x), logdet

    def inverse(self, x: Tensor, *, max_iterations: int | None = None) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)``; each 1D map is inverted by safeguarded Newton iteration.

        Each link's shift is solved to a residual below 64 machine epsilons of the dtype
        (``1.4e-14`` in float64, ``7.6e-6`` in float32); raises ``RuntimeError`` with the largest
        residual if a layer has not converged after ``max_iterations`` (default :attr:`max_iterations`).
        The host synchronises once per Newton iteration to test convergence (the forward never does).
        """
        cap = self.max_iterations if max_iterations is None else max_iterations
        z, logdet = x, x.new_zeros(x.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z, max_iterations=cap)
            logdet = logdet + ld
        return wrap(z), logdet

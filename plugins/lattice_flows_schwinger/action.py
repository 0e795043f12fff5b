"""The two-flavour Schwinger model: 2D U(1) gauge links with two degenerate flavours of Wilson fermions.

Target density ``p(x) ~ exp(-S_G(x)) det(D^dag D)``, with the gauge action of ``u1_wilson``
(``S_G = beta sum_P (1 - cos x_P)``) and the Wilson-Dirac operator ``D`` of :mod:`.dirac` (bare mass
``mass``, r = 1, antiperiodic in direction 0). Two actions share it:

- ``schwinger`` (:class:`SchwingerPseudofermion`): HMC's pseudofermions. Each update draws
  ``phi = D^dag eta`` (``eta`` complex normal, ``<|eta_i|^2> = 1``) from the current ``x``; the update then
  moves under ``S(x, phi) = S_G(x) + phi^dag (D^dag D)^{-1} phi``, with one batched conjugate-gradient solve
  per evaluation (:mod:`.cg`) and the analytic force from that solve. Integrating ``phi`` out gives the
  target exactly. Its ``__call__`` is the marginal ``S_G - log det(D^dag D)`` from a dense determinant,
  ``O(V^3)``: small lattices only, and not what its samplers evaluate.
- ``schwinger_det`` (:class:`SchwingerDeterminant`): the marginal action itself, ``S_G - log det(D^dag D)``
  from a dense LU per configuration, its force by autograd. No pseudofermion noise: every sampler can be
  checked against the same target, and flows can be trained on it. ``O(V^3)`` per evaluation.

Both are ``theory = "u1"`` (link angles ``(B, 2, L_0, L_1)``), so the U(1) observables, flows and samplers
apply; neither is the pure-gauge Wilson action, so no pure-gauge exact value is shown for them.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import attrs
import torch
from torch import Tensor

from lattice_flows import Action
from lattice_flows.params import flag, integer, real

from lattice_flows_u1.action import U1Wilson

from .cg import conjugate_gradient
from .dirac import (
    apply_dirac, apply_dirac_dagger, apply_normal, complex_dtype, dirac_link_derivative, fermion_links, gamma5, log_det_normal,
)
from .even_odd import EvenOddGeometry, EvenOddOperator

__all__ = [
    "SchwingerAction", "SchwingerPseudofermion", "SchwingerDeterminant", "PseudofermionDynamics",
    "EvenOddPseudofermionDynamics", "default_cg_tol",
]

#: The default conjugate-gradient tolerance per dtype (``cg_tol = 0``), and the smallest one a dtype can reach.
DEFAULT_CG_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
MIN_CG_TOL = {torch.float64: 1e-13, torch.float32: 1e-6}

#: Largest number of sites for the dense determinant (``2 V`` rows): 64 x 64 is 8192 rows, a 1 GiB matrix.
DENSE_MAX_SITES = 4096


def default_cg_tol(dtype: torch.dtype) -> float:
    """The relative residual CG solves to when the spec leaves ``cg_tol = 0``: 1e-10 in float64, 1e-5 in float32."""
    return DEFAULT_CG_TOL[dtype]


def _check_dense(lattice_shape: Sequence[int], what: str) -> None:
    sites = math.prod(lattice_shape)
    if sites > DENSE_MAX_SITES:
        raise ValueError(
            f"{what} needs the dense Dirac matrix, {2 * sites} x {2 * sites} on a {list(lattice_shape)} lattice; "
            f"expected at most {DENSE_MAX_SITES} sites (64 x 64): use the pseudofermion action 'schwinger' there"
        )


@attrs.frozen(kw_only=True)
class SchwingerAction(Action):
    """What both Schwinger-model actions share: ``beta``, ``mass``, the gauge part, the prior and symmetries.

    Fields: link angles ``(B, 2, L_0, L_1)`` in radians, as for ``u1_wilson``; actions are dimensionless ``(B,)``.
    """

    theory: ClassVar[str] = "u1"
    dimensions: ClassVar[tuple[int, ...]] = (2,)
    period: ClassVar[float] = 2 * math.pi
    example_params: ClassVar[dict] = {"beta": 2.0, "mass": 0.2}
    example_lattices: ClassVar[tuple[tuple[int, ...], ...]] = ((4, 4), (4, 6))

    beta: float = real(help="inverse gauge coupling beta of the Wilson gauge action (as u1_wilson)", gt=0.0, le=U1Wilson.BETA_MAX)
    mass: float = real(
        help="bare fermion mass m of the Wilson-Dirac operator (r = 1), both flavours; above -2 (the free "
        "operator's edge). Small or negative masses bring near-zero modes: the solver and the force slow down",
        gt=-2.0,
    )

    @property
    def gauge(self) -> U1Wilson:
        """The gauge part, ``u1_wilson`` at the same ``beta``."""
        return U1Wilson(beta=self.beta)

    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        name = type(self).__name__
        if len(lattice_shape) != 2:
            raise ValueError(f"{name} is a 2D theory: expected a lattice shape [L_0, L_1], got {list(lattice_shape)}")
        if min(lattice_shape) < 2:
            raise ValueError(f"{name}: expected lattice sizes of at least 2 (a fermion hop needs a neighbour), got {list(lattice_shape)}")
        return (2, *lattice_shape)

    def log_det(self, x: Tensor) -> Tensor:
        """``log det(D^dag D)`` per configuration, ``(B,)``, from the dense matrix (differentiable, ``O(V^3)``)."""
        _check_dense(x.shape[2:], f"{type(self).__name__}.log_det")
        return log_det_normal(x, self.mass)

    def marginal(self, x: Tensor) -> Tensor:
        """The exact two-flavour action ``S_G(x) - log det(D^dag D)``, ``(B,)`` (dense: small lattices)."""
        return self.gauge(x) - self.log_det(x)

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device) -> Tensor:
        """Haar-random links, as ``u1_wilson``: ``(n, 2, L_0, L_1)``."""
        self.field_shape(lattice_shape)
        return self.gauge.sample_prior(n, lattice_shape, generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        return self.gauge.prior_log_prob(x)

    def normalize(self, x: Tensor) -> Tensor:
        return self.gauge.normalize(x)

    def random_symmetry(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random gauge transformation: ``det(D^dag D)`` is gauge invariant (``D -> g D g^dag``)."""
        return self.gauge.random_symmetry(x, generator)


@attrs.frozen(kw_only=True)
class SchwingerDeterminant(SchwingerAction):
    """``S(x) = beta sum_P (1 - cos x_P) - log det(D^dag D)``: the two-flavour target, by a dense determinant.

    Exact and noise-free, ``O(V^3)`` per evaluation (``(2V)^3`` flops: 8x8 costs little, 32x32 seconds per
    configuration); the force is autograd through the LU. For checks and for training flows on small
    lattices; ``schwinger`` samples the same density at any size.
    """

    def __call__(self, x: Tensor) -> Tensor:
        return self.marginal(x)


@attrs.frozen(kw_only=True)
class SchwingerPseudofermion(SchwingerAction):
    """The two-flavour Schwinger model with pseudofermions: ``S(x, phi) = S_G(x) + phi^dag (D^dag D)^{-1} phi``.

    :meth:`refresh` draws ``phi = D^dag eta`` given the chains' ``x`` and returns the
    :class:`PseudofermionDynamics` the samplers integrate with; every evaluation of it solves
    ``D^dag D X = phi`` by conjugate gradient, each chain to the relative residual ``cg_tol``, and a chain
    that does not converge within ``cg_max_iter`` iterations stops the run with :class:`CGNotConverged`.
    ``__call__`` is the exact marginal, by a dense determinant (``O(V^3)``; used only to check a run at
    build time and by flow training and independence sampling's first weight), so the run's default
    observables leave out ``action_density`` (:attr:`expensive_call`).
    """

    expensive_call: ClassVar[bool] = True

    cg_tol: float = real(
        help="relative residual |phi - D^dag D X| / |phi| every chain's solve reaches; 0: 1e-10 in float64, "
        "1e-5 in float32 (below 1e-13 / 1e-6 the dtype cannot get there and the run is refused)",
        default=0.0,
        ge=0.0,
        lt=1.0,
    )
    cg_max_iter: int = integer(
        help="iteration cap of each solve; a chain still above cg_tol then stops the run with an error", default=5000, ge=1
    )
    even_odd: bool = flag(
        help="even-odd preconditioning: pseudofermions on the even sites only, S_F = phi_e^dag (D_hat^dag D_hat)^-1 phi_e "
        "with the Schur complement D_hat = (m + 2) - D_eo D_oe / (m + 2); the same target (det D = (m + 2)^(V/2) det D_hat), "
        "fewer and cheaper CG iterations; needs even lattice sizes",
        default=False,
    )

    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        shape = super().field_shape(lattice_shape)
        if self.even_odd and any(int(s) % 2 for s in lattice_shape):
            raise ValueError(
                f"schwinger: even_odd = true needs even lattice sizes (an odd periodic lattice is not bipartite), "
                f"got {list(lattice_shape)}; use even sizes or even_odd = false"
            )
        return shape

    def __call__(self, x: Tensor) -> Tensor:
        return self.marginal(x)

    def tolerance(self, dtype: torch.dtype) -> float:
        """The solver tolerance in ``dtype``: ``cg_tol``, or the dtype's default for 0. Raises ``ValueError``
        if ``cg_tol`` is below what ``dtype`` can reach."""
        if dtype not in DEFAULT_CG_TOL:
            raise TypeError(f"schwinger: expected float32 or float64 link angles, got {dtype}")
        if self.cg_tol == 0.0:
            return DEFAULT_CG_TOL[dtype]
        if self.cg_tol < MIN_CG_TOL[dtype]:
            raise ValueError(
                f"schwinger: cg_tol = {self.cg_tol:g} cannot be reached in {str(dtype).replace('torch.', '')} "
                f"(round-off stops the residual near {MIN_CG_TOL[dtype]:g}); expected cg_tol >= {MIN_CG_TOL[dtype]:g}, "
                "or 0 for the dtype's default"
            )
        return self.cg_tol

    def refresh(self, x: Tensor, generator: torch.Generator) -> "PseudofermionDynamics":
        """Pseudofermions for one update: ``eta`` complex normal ``(B, 2, L_0, L_1)``, ``phi = D^dag(x) eta``;
        with ``even_odd``, ``eta_e`` ``(B, 2, V/2)`` on the even sites and ``phi_e = D_hat^dag(x) eta_e``."""
        tol = self.tolerance(x.dtype)
        if self.even_odd:
            geometry = EvenOddGeometry(x.shape[2:], x.device)
            op = EvenOddOperator(x.detach(), self.mass, geometry)
            half = (x.shape[0], 2, geometry.sites[0].numel())
            eta = torch.randn(half, generator=generator, dtype=complex_dtype(x.dtype), device=x.device)
            return EvenOddPseudofermionDynamics(self, op.schur_dagger(eta), tol, geometry)
        eta = torch.randn(x.shape, generator=generator, dtype=complex_dtype(x.dtype), device=x.device)
        phi = apply_dirac_dagger(x, eta, self.mass)
        return PseudofermionDynamics(self, phi, tol)


def _re_dot(a: Tensor, b: Tensor) -> Tensor:
    """``Re a^dag b`` per configuration, ``(B,)``."""
    return (a.conj() * b).real.flatten(1).sum(1)


class PseudofermionDynamics:
    """``S(x) = S_G(x) + phi^dag (D^dag(x) D(x))^{-1} phi`` for pseudofermions ``phi`` held fixed (one update).

    What :meth:`SchwingerPseudofermion.refresh` returns and the samplers integrate with. ``__call__`` and
    :meth:`force` each solve ``D^dag D X = phi`` for every chain (from ``X = 0``, so the force is a function
    of ``x`` alone, and a trajectory is reversible to the solver tolerance); ``__call__`` is differentiable in
    ``x`` through the analytic force, so FTHMC's autograd through a flow works on it. :meth:`statistics`:
    the CG iterations of this update per chain; :attr:`solves` counts the solves.
    """

    def __init__(self, action: SchwingerPseudofermion, phi: Tensor, tol: float):
        self.action = action
        self.phase_space = action.phase_space
        self.phi = phi
        self.tol = tol
        self.iterations = torch.zeros(phi.shape[0], dtype=torch.int64, device=phi.device)
        self.solves = 0
        self._last: tuple[Tensor, Tensor] | None = None

    def solve(self, x: Tensor, links: Tensor | None = None) -> Tensor:
        """``X = (D^dag D)^{-1} phi`` on the links ``x`` ``(B, 2, L_0, L_1)``, complex, the shape of ``phi``.

        The last solution is kept: the same ``x`` again (the Hamiltonian and the first force of a trajectory,
        the last force and the final Hamiltonian) costs no second solve.
        """
        x = x.detach()
        if self._last is not None and self._last[0].shape == x.shape and torch.equal(self._last[0], x):
            return self._last[1]
        u = fermion_links(x) if links is None else links
        result = conjugate_gradient(
            self._normal_operator(x, u), self.phi, tol=self.tol, max_iter=self.action.cg_max_iter,
            what="the pseudofermion action",
        )
        self.iterations = self.iterations + result.iterations
        self.solves += 1
        self._last = (x.clone(), result.x)
        return result.x

    def _normal_operator(self, x: Tensor, links: Tensor):
        """The hermitian positive operator whose inverse acts on ``phi``: here ``D^dag D``."""
        mass = self.action.mass
        return lambda v: apply_normal(x, v, mass, links=links)

    def fermion_force(self, x: Tensor, solution: Tensor, links: Tensor | None = None) -> Tensor:
        """``dS_F/dx = -2 Re d/dx [ (D X)^dag D X ]``-part: ``-2 Re (D X)^dag (dD/dx) X``, real ``(B, 2, L_0, L_1)``."""
        x = x.detach()
        u = fermion_links(x) if links is None else links
        y = apply_dirac(x, solution, self.action.mass, links=u)
        return -2.0 * dirac_link_derivative(x, y, solution, links=u).real

    def fermion_action(self, x: Tensor) -> Tensor:
        """``S_F = phi^dag (D^dag D)^{-1} phi`` per configuration, ``(B,)``, differentiable in ``x``."""
        return _PseudofermionEnergy.apply(x, self)

    def __call__(self, x: Tensor) -> Tensor:
        return self.action.gauge(x) + self.fermion_action(x)

    def force(self, x: Tensor) -> Tensor:
        u = fermion_links(x.detach())
        solution = self.solve(x, u)
        return self.action.gauge.force(x) + self.fermion_force(x, solution, u)

    def statistics(self) -> dict[str, Tensor]:
        """``cg_iterations``: the CG iterations of this update per chain, summed over its solves, ``(B,)`` int64.

        (The number of solves, :attr:`solves`, is the same for every trajectory of a fixed integrator, one per
        force evaluation at a new point, so it is not a column.)"""
        return {"cg_iterations": self.iterations.clone()}


class EvenOddPseudofermionDynamics(PseudofermionDynamics):
    """The even-odd preconditioned pseudofermion action, ``S_F = phi_e^dag (D_hat^dag D_hat)^{-1} phi_e`` (one update).

    ``phi`` lives on the even sites, ``(B, 2, V/2)`` (packed as :class:`.even_odd.EvenOddGeometry` orders them);
    ``D_hat = M - D_eo D_oe / M`` with ``M = m + 2``. Since ``det D = M^{V/2} det D_hat``, integrating ``phi_e``
    out gives ``det(D^dag D)`` up to a constant: the same target as the unpreconditioned action. With
    ``X = (D_hat^dag D_hat)^{-1} phi_e`` and ``Y = D_hat X``,

        dS_F/dx = -2 Re Y^dag (dD_hat/dx) X = (2 / M) Re [ Y^dag dD_eo (D_oe X) + (D_eo^dag Y)^dag dD_oe X ],

    which is ``(2 / M) Re L^dag (dD/dx) R`` of the full operator for the full fields ``L = (Y, D_eo^dag Y)``
    and ``R = (X, D_oe X)`` (even part, odd part): :func:`.dirac.dirac_link_derivative` computes it.
    """

    def __init__(self, action: SchwingerPseudofermion, phi: Tensor, tol: float, geometry: EvenOddGeometry):
        super().__init__(action, phi, tol)
        self.geometry = geometry

    def _operator(self, x: Tensor, links: Tensor) -> EvenOddOperator:
        return EvenOddOperator(x, self.action.mass, self.geometry, links)

    def _normal_operator(self, x: Tensor, links: Tensor):
        return self._operator(x, links).schur_normal

    def fermion_force(self, x: Tensor, solution: Tensor, links: Tensor | None = None) -> Tensor:
        """``dS_F/dx``, real ``(B, 2, L_0, L_1)``, from the even-site solution ``X`` ``(B, 2, V/2)``."""
        x = x.detach()
        u = fermion_links(x) if links is None else links
        op, g = self._operator(x, u), self.geometry
        y = op.schur(solution)
        right = g.unpack(solution, op.off_diagonal(1, solution))
        # D_eo^dag = (D^dag)_oe = gamma_5 D_oe gamma_5 (gamma_5 keeps the parity)
        left = g.unpack(y, gamma5(op.off_diagonal(1, gamma5(y))))
        return (2.0 / op.diagonal) * dirac_link_derivative(x, left, right, links=u).real


class _PseudofermionEnergy(torch.autograd.Function):
    """``S_F(x) = Re phi^dag X`` with ``X = (D^dag D)^{-1} phi``; backward through the analytic force (one solve)."""

    @staticmethod
    def forward(ctx, x: Tensor, dynamics: PseudofermionDynamics) -> Tensor:
        u = fermion_links(x.detach())
        solution = dynamics.solve(x, u)
        ctx.dynamics = dynamics
        ctx.save_for_backward(x, solution, u)
        return _re_dot(dynamics.phi, solution).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, solution, u = ctx.saved_tensors
        force = ctx.dynamics.fermion_force(x, solution, u)
        return grad.view(-1, *([1] * (x.dim() - 1))) * force, None

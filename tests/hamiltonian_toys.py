"""Toy theories with exact answers for the Hamiltonian side: a group manifold, auxiliary fields, a mass matrix.

Registered, like ``tests/toy_plugins.py``, through faked entry points (the ``hamiltonian_toys`` fixture in
the tests that use them: ``fake_entry_points.update(hamiltonian_toys.entry_points())``); nothing here is
installed.

- ``su2_toy``: ``n`` independent SU(2) matrices stored as unit quaternions ``U = a0 + i a.sigma``, fields
  ``(B, *lattice_shape, 4)`` (real), momenta in su(2) as ``(B, *lattice_shape, 3)``, ``U <- exp(eps P) U``
  (:class:`SU2PhaseSpace`), ``S = -beta sum a0 = -beta/2 sum Re tr U``, Haar prior. Exact: the density of
  each ``a0`` is ``∝ sqrt(1 - a0^2) exp(beta a0)`` on ``[-1, 1]``, ``<a0> = I_2(beta) / I_1(beta)``.
- ``pseudo_boson``: a real field ``x`` with a Gaussian auxiliary field ``phi`` of the same shape,
  ``S(x, phi) = sum [S0(x) + a(x) phi^2 / 2]``, ``S0 = x^2/2 + lam x^4``, ``a = 1 + c x^2``, refreshed by the
  heat bath ``phi = eta / sqrt(a(x))`` (:meth:`PseudoBoson.refresh`); the marginal of each component is
  ``∝ exp(-S0(x)) a(x)^(-1/2)``, whose moments :func:`pseudo_boson_moment` gets by quadrature. The refreshed
  action counts its "solves" (every evaluation of ``S`` or its force) as a pseudofermion action counts its
  solver iterations; they reach the table as the column ``action.solves``.
- :class:`AnisotropicGaussian` (not registered): ``S = sum x_i^2 / (2 sigma_i^2)`` on a flat space with the
  diagonal mass ``m_i = 1 / sigma_i^2`` (:class:`lattice_flows.phase_space.DiagonalMass`); ``<x_i^2> = sigma_i^2``.
- :class:`ThreeScaleGaussian` (not registered): ``S = sum (k_0 + k_1 + k_2) x^2 / 2`` whose force is a
  :class:`lattice_flows.SplitForce` of three parts, one per time scale of ``nested_leapfrog``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import entrypoints
import numpy as np
import torch
from scipy import integrate, special
from torch import Tensor

from lattice_flows import Action, Flow, Observable, SplitForce
from lattice_flows.params import injected, real
from lattice_flows.phase_space import DiagonalMass, PhaseSpace
from lattice_flows.testing.flows import IdentityFlow
from toy_plugins import AffineFlow

# -- SU(2) as unit quaternions ---------------------------------------------------------------------------


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """``a b`` for quaternions ``(..., 4)`` read as SU(2) matrices ``a0 + i a.sigma``:
    ``(a0 b0 - a.b, a0 b + b0 a - a x b)``."""
    a, b = torch.broadcast_tensors(a, b)
    a0, av = a[..., :1], a[..., 1:]
    b0, bv = b[..., :1], b[..., 1:]
    c0 = a0 * b0 - (av * bv).sum(-1, keepdim=True)
    cv = a0 * bv + b0 * av - torch.linalg.cross(av, bv, dim=-1)
    return torch.cat([c0, cv], dim=-1)


def su2_exp(p: Tensor, eps: float) -> Tensor:
    """``exp(eps i p.sigma)`` as a unit quaternion ``(cos(eps |p|), sin(eps |p|) p / |p|)``: ``(..., 3) -> (..., 4)``."""
    norm = p.norm(dim=-1, keepdim=True)
    theta = eps * norm
    return torch.cat([torch.cos(theta), eps * torch.sinc(theta / math.pi) * p], dim=-1)


def generator_tangents(x: Tensor) -> Tensor:
    """``T_k U`` for the generators ``T_k = i sigma_k``: ``(..., 4) -> (..., 3, 4)`` (left multiplication)."""
    basis = torch.eye(4, dtype=x.dtype, device=x.device)[1:]  # (0, e_k): the quaternions of i sigma_k
    return quaternion_multiply(basis, x.unsqueeze(-2))


class SU2PhaseSpace(PhaseSpace):
    """SU(2) fields ``(B, ..., 4)`` (unit quaternions), momenta ``(B, ..., 3)`` in su(2) with ``K = |p|^2 / 2``,
    ``U <- exp(eps i p.sigma) U``; the force is the derivative along ``i sigma_k`` acting from the left."""

    def sample_momenta(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn((*x.shape[:-1], 3), generator=generator, dtype=x.dtype, device=x.device)

    def kinetic_energy(self, p: Tensor) -> Tensor:
        return 0.5 * p.square().flatten(1).sum(dim=1)

    def update_position(self, x: Tensor, p: Tensor, eps: float) -> Tensor:
        return quaternion_multiply(su2_exp(p, eps), x)

    def gradient_to_force(self, x: Tensor, grad: Tensor) -> Tensor:
        return (generator_tangents(x) * grad.unsqueeze(-2)).sum(-1)

    def __repr__(self) -> str:
        return "SU2PhaseSpace()"


SU2 = SU2PhaseSpace()


@attrs.frozen(kw_only=True)
class SU2Toy(Action):
    """``S = -beta sum_i a0_i`` for independent SU(2) matrices, analytic Lie-derivative force ``F_k = beta a_k``."""

    theory: ClassVar[str] = "su2_toy"
    phase_space: ClassVar[PhaseSpace] = SU2
    example_params: ClassVar[dict] = {"beta": 1.5}
    beta: float = real(help="coupling", gt=0.0)

    def field_shape(self, lattice_shape):
        return (*lattice_shape, 4)

    def __call__(self, x):
        return -self.beta * x[..., 0].flatten(1).sum(1)

    def force(self, x):
        return self.beta * x[..., 1:]

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device):
        q = torch.randn((n, *lattice_shape, 4), generator=generator, dtype=dtype, device=device)
        return q / q.norm(dim=-1, keepdim=True)

    def prior_log_prob(self, x):
        return torch.full((x.shape[0],), -x[0, ..., 0].numel() * math.log(2 * math.pi**2), dtype=x.dtype, device=x.device)

    def cold_start(self, n, lattice_shape, *, dtype, device):
        x = torch.zeros((n, *lattice_shape, 4), dtype=dtype, device=device)
        x[..., 0] = 1.0
        return x

    def random_symmetry(self, x, generator):
        v = torch.randn((x.shape[0], *([1] * (x.dim() - 2)), 4), generator=generator, dtype=x.dtype, device=x.device)
        v = v / v.norm(dim=-1, keepdim=True)
        v_inverse = v * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=x.dtype, device=x.device)
        return quaternion_multiply(quaternion_multiply(v.expand_as(x), x), v_inverse.expand_as(x))


@attrs.frozen(kw_only=True)
class SU2AutogradToy(SU2Toy):
    """:class:`SU2Toy` with the default force: autograd through ``gradient_to_force``."""

    force = Action.force


def su2_a0_density_integral(beta: float, lo: float, hi: float) -> float:
    """``∫_lo^hi sqrt(1 - a^2) exp(beta a) da`` (by quadrature)."""
    return integrate.quad(lambda a: math.sqrt(max(0.0, 1 - a * a)) * math.exp(beta * a), lo, hi, epsabs=1e-13, epsrel=1e-12)[0]


@attrs.frozen(kw_only=True)
class SU2A0(Observable):
    """The mean of ``a0 = Re tr U / 2`` over the sites; exact ``I_2(beta) / I_1(beta)``."""

    theory: ClassVar[str] = "su2_toy"
    action: Action = injected("action")

    def __call__(self, x):
        return x[..., 0].flatten(1).mean(1)

    def exact(self):
        return {1: float(special.iv(2, self.action.beta) / special.iv(1, self.action.beta))}


@attrs.frozen(kw_only=True)
class SU2A0Bin(Observable):
    """The fraction of sites with ``lo <= a0 < hi``: one bin of the histogram of ``a0``, exact by quadrature."""

    theory: ClassVar[str] = "su2_toy"
    example_params: ClassVar[dict] = {"lo": 0.0, "hi": 0.5}
    lo: float = real(help="lower edge", ge=-1.0, le=1.0)
    hi: float = real(help="upper edge", ge=-1.0, le=1.0)
    action: Action = injected("action")

    def __call__(self, x):
        a0 = x[..., 0].flatten(1)
        return ((a0 >= self.lo) & (a0 < self.hi)).to(x.dtype).mean(1)

    def exact(self):
        beta = self.action.beta
        return {1: su2_a0_density_integral(beta, self.lo, self.hi) / su2_a0_density_integral(beta, -1.0, 1.0)}


@attrs.frozen(kw_only=True)
class SU2NormDeviation(Observable):
    """``max_i ||U_i| - 1|`` per configuration: how far the field is off the group (0 up to rounding)."""

    theory: ClassVar[str] = "su2_toy"

    def __call__(self, x):
        return (x.norm(dim=-1) - 1).abs().flatten(1).amax(1)


class SU2IdentityFlow(IdentityFlow):
    """``f(U) = U`` on SU(2) fields (the kit's identity flow): FTHMC through it is HMC on the group, trajectory for trajectory."""

    theory: ClassVar[str] = "su2_toy"


# -- a Gaussian auxiliary field ----------------------------------------------------------------------------


class ConditionedPseudoBoson:
    """``S(x, phi)`` at a fixed auxiliary field ``phi`` (what :meth:`PseudoBoson.refresh` returns); counts its
    evaluations of ``S`` and of the force per chain ("solves")."""

    def __init__(self, action: "PseudoBoson", phi: Tensor):
        self.action = action
        self.phi = phi
        self.phase_space = action.phase_space
        self.solves = torch.zeros(phi.shape[0], dtype=torch.int64, device=phi.device)

    def __call__(self, x):
        self.solves += 1
        return self.action.base_action(x) + 0.5 * (self.action.a(x) * self.phi.square()).flatten(1).sum(1)

    def force(self, x):
        self.solves += 1
        return x + 4 * self.action.lam * x**3 + self.action.c * x * self.phi.square()

    def statistics(self):
        return {"solves": self.solves.clone()}


@attrs.frozen(kw_only=True)
class PseudoBoson(Action):
    """``S(x, phi) = sum x^2/2 + lam x^4 + (1 + c x^2) phi^2 / 2``; ``__call__`` is the exact marginal
    ``sum x^2/2 + lam x^4 + log(1 + c x^2) / 2``; :meth:`refresh` draws ``phi`` by its heat bath."""

    theory: ClassVar[str] = "pseudo_boson"
    example_params: ClassVar[dict] = {"lam": 0.1, "c": 2.0}
    lam: float = real(help="quartic coupling", ge=0.0)
    c: float = real(help="strength of the auxiliary field's coupling", gt=0.0)

    def a(self, x):
        return 1 + self.c * x.square()

    def base_action(self, x):
        return (0.5 * x.square() + self.lam * x**4).flatten(1).sum(1)

    def field_shape(self, lattice_shape):
        return tuple(lattice_shape)

    def __call__(self, x):
        return self.base_action(x) + 0.5 * torch.log(self.a(x)).flatten(1).sum(1)

    def force(self, x):
        return x + 4 * self.lam * x**3 + self.c * x / self.a(x)

    def refresh(self, x, generator):
        eta = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return ConditionedPseudoBoson(self, eta / torch.sqrt(self.a(x)))

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device):
        return torch.randn((n, *lattice_shape), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x):
        return -0.5 * x.square().flatten(1).sum(1) - 0.5 * x[0].numel() * math.log(2 * math.pi)

    def random_symmetry(self, x, generator):
        return -x


def pseudo_boson_moment(lam: float, c: float, power: int) -> float:
    """``<x^power>`` of one component under the marginal ``∝ exp(-x^2/2 - lam x^4) / sqrt(1 + c x^2)`` (quadrature)."""
    weight = lambda x: math.exp(-0.5 * x * x - lam * x**4) / math.sqrt(1 + c * x * x)  # noqa: E731
    z = integrate.quad(weight, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12)[0]
    return integrate.quad(lambda x: x**power * weight(x), -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12)[0] / z


@attrs.frozen(kw_only=True)
class PBXSquared(Observable):
    """The mean of ``x^2`` over the components; exact by quadrature of the marginal."""

    theory: ClassVar[str] = "pseudo_boson"
    action: Action = injected("action")

    def __call__(self, x):
        return x.square().flatten(1).mean(1)

    def exact(self):
        return {1: pseudo_boson_moment(self.action.lam, self.action.c, 2)}


@attrs.frozen(kw_only=True)
class PBXFourth(Observable):
    """The mean of ``x^4`` over the components; exact by quadrature of the marginal."""

    theory: ClassVar[str] = "pseudo_boson"
    action: Action = injected("action")

    def __call__(self, x):
        return (x**4).flatten(1).mean(1)

    def exact(self):
        return {1: pseudo_boson_moment(self.action.lam, self.action.c, 4)}


class PBAffineFlow(AffineFlow):
    """``x = e^a z + b`` with two scalar parameters (the toy :class:`AffineFlow`), for the ``pseudo_boson`` theory."""

    theory: ClassVar[str] = "pseudo_boson"


# -- flat toys: a mass matrix, three time scales ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AnisotropicGaussian(Action):
    """``S = sum_i x_i^2 / (2 sigma_i^2)`` on a 1D lattice of ``len(sigmas)`` sites, HMC with masses ``1 / sigma_i^2``."""

    theory: ClassVar[str] = "anisotropic_gaussian"
    sigmas: tuple = (0.5, 1.0, 3.0)

    @property
    def phase_space(self):
        return DiagonalMass(1.0 / torch.tensor(self.sigmas, dtype=torch.float64) ** 2)

    def field_shape(self, lattice_shape):
        return (len(self.sigmas),)

    def _inv_var(self, x):
        return 1.0 / torch.tensor(self.sigmas, dtype=x.dtype, device=x.device) ** 2

    def __call__(self, x):
        return 0.5 * (x.square() * self._inv_var(x)).sum(1)

    def force(self, x):
        return x * self._inv_var(x)

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device):
        return torch.randn((n, len(self.sigmas)), generator=generator, dtype=dtype, device=device)

    def random_symmetry(self, x, generator):
        return -x


@attrs.frozen(kw_only=True)
class ThreeScaleGaussian(Action):
    """``S = sum (k_0 + k_1 + k_2) x^2 / 2`` with the force split into ``k_j x``, one part per time scale."""

    theory: ClassVar[str] = "three_scale_gaussian"
    k: tuple = (1.0, 9.0, 100.0)

    def field_shape(self, lattice_shape):
        return tuple(lattice_shape)

    def __call__(self, x):
        return 0.5 * sum(self.k) * x.square().flatten(1).sum(1)

    @property
    def force(self):
        return SplitForce(*(lambda x, k=k: k * x for k in self.k))

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device):
        return torch.randn((n, *lattice_shape), generator=generator, dtype=dtype, device=device)

    def random_symmetry(self, x, generator):
        return -x


def entry_points() -> dict[str, list[entrypoints.EntryPoint]]:
    """Entry points, by group, as a distribution ``hamiltonian-toys`` would declare them."""
    dist = entrypoints.Distribution("hamiltonian-toys", "1.0")

    def ep(name, attr):
        return entrypoints.EntryPoint(name, __name__, attr, distro=dist)

    return {
        "lattice_flows.actions": [ep("su2_toy", "SU2Toy"), ep("su2_toy_autograd", "SU2AutogradToy"), ep("pseudo_boson", "PseudoBoson")],
        "lattice_flows.observables": [
            ep("su2_a0", "SU2A0"), ep("su2_a0_bin", "SU2A0Bin"), ep("su2_norm_deviation", "SU2NormDeviation"),
            ep("pb_x_squared", "PBXSquared"), ep("pb_x_fourth", "PBXFourth"),
        ],
        "lattice_flows.flows": [ep("su2_identity", "SU2IdentityFlow"), ep("pb_affine", "PBAffineFlow")],
    }

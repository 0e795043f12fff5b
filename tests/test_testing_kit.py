"""The contract kit catches faults: deliberately broken components fail the check that is about them.

Each broken component differs from a correct one (which passes the same call, so the failure is the
fault's) in one place: a force off by one part in a million, an inverse that forgets a shift, a
log-determinant one site short, a step that is not time-symmetric, momenta drawn with the wrong
variance, an observable that depends on the gauge or on the representative of an angle.
"""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

import attrs
import pytest
import torch

from lattice_flows import ChainState, Integrator, Observable, testing
from lattice_flows.testing import ContractError
from lattice_flows_hmc.hmc import HMC, metropolis, select
from lattice_flows_hmc.integrators import Leapfrog
from lattice_flows_phi4.action import Phi4
from lattice_flows_u1.action import U1Wilson
from lattice_flows_u1.observables import Plaquette
from lattice_flows_u1.sampler import U1Exact
from toy_plugins import AffineFlow, GaussianAction


def _fails(check: str, call, *args, **kwargs) -> ContractError:
    with pytest.raises(ContractError) as info:
        call(*args, **kwargs)
    assert info.value.check.split(" ")[0] == check, str(info.value)
    assert isinstance(info.value, AssertionError)
    return info.value


# -- actions ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SlightlyWrongForce(U1Wilson):
    def force(self, x):
        return super().force(x) * (1 + 1e-6)


def test_a_force_off_by_one_part_in_a_million_fails(device, dtype):
    if dtype != torch.float64:
        pytest.skip("1e-6 is below float32's tolerance")
    testing.check_action(U1Wilson(beta=2.0), device=device, dtype=dtype)
    error = _fails("force_matches_autograd", testing.check_action, SlightlyWrongForce(beta=2.0), device=device, dtype=dtype)
    assert "SlightlyWrongForce" in str(error) and "max |force - autograd|" in str(error)


@attrs.frozen(kw_only=True)
class NotGaugeInvariant(U1Wilson):
    def __call__(self, x):
        return super().__call__(x) + 0.1 * torch.cos(x[:, 0, 0, 0])  # one link on its own


def test_an_action_that_is_not_symmetric_fails(device, dtype):
    _fails("symmetry_invariance", testing.check_action, NotGaugeInvariant(beta=2.0), device=device, dtype=dtype)


@attrs.frozen(kw_only=True)
class BatchCoupled(GaussianAction):
    def __call__(self, x):
        return super().__call__(x) + 1e-3 * (x**2).sum()  # the whole batch in every value


def test_an_action_that_mixes_the_batch_fails(device, dtype):
    _fails("batch_independence", testing.check_action, BatchCoupled(sigma=1.0), device=device, dtype=dtype)


# -- flows --------------------------------------------------------------------------------------


class ForgetfulInverse(AffineFlow):
    def inverse(self, x):
        z, logdet = super().inverse(x)
        return z + self.shift * torch.exp(-self.log_scale), logdet  # forgets to remove the shift


class ShortLogdet(AffineFlow):
    """Forward and inverse agree with each other, but count one site too few."""

    def forward(self, z):
        x, _ = super().forward(z)
        return x, ((z[0].numel() - 1) * self.log_scale).expand(z.shape[0])

    def inverse(self, x):
        z, _ = super().inverse(x)
        return z, (-(x[0].numel() - 1) * self.log_scale).expand(x.shape[0])


def test_a_flow_that_does_not_invert_fails(device):
    testing.check_flow(AffineFlow, GaussianAction, device=device)
    error = _fails("inverse", testing.check_flow, ForgetfulInverse, GaussianAction, device=device)
    assert "ForgetfulInverse" in str(error)


def test_a_wrong_log_determinant_fails(device):
    error = _fails("logdet_matches_jacobian", testing.check_flow, ShortLogdet, GaussianAction, device=device)
    assert "autograd Jacobian" in str(error)


# -- integrators --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SymplecticEuler(Integrator):
    """``v -= eps F(x); x += eps v``: symplectic, first order, and not time-reversible."""

    order: ClassVar[int] = 1
    example_params: ClassVar[dict] = {"step_size": 0.1, "n_steps": 10}

    def integrate(self, x, v, force):
        for _ in range(self.n_steps):
            v = v - self.step_size * force(x)
            x = x + self.step_size * v
        return x, v

    @property
    def force_evaluations(self):
        return self.n_steps


@attrs.frozen(kw_only=True)
class MiscountedLeapfrog(Leapfrog):
    @property
    def force_evaluations(self):
        return self.n_steps  # it is n_steps + 1


def test_an_integrator_that_is_not_reversible_fails(device):
    testing.check_integrator(Leapfrog, device=device)
    error = _fails("reversible", testing.check_integrator, SymplecticEuler, device=device)
    assert "> 1e-11" in str(error)


def test_a_miscounted_integrator_fails(device):
    error = _fails("force_evaluations", testing.check_integrator, MiscountedLeapfrog, device=device)
    assert "called the force 8 times" in str(error)


# -- samplers -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WrongMomentaHMC(HMC):
    """HMC whose momenta are drawn from ``N(0, 4)`` while its kinetic energy is ``v^2 / 2``: not exact."""

    def step(self, state, action, generator):
        x = state.x
        v = 2 * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x1, _, delta_H = self.trajectory(x, v, action)
        accepted = metropolis(delta_H, generator)
        return ChainState(x=select(accepted, x1, x)), {"accepted": accepted, "delta_H": delta_H}


def _free_phi4_observables():
    from lattice_flows import OBSERVABLES

    return [OBSERVABLES.get(name) for name in ("phi_squared", "abs_magnetization", "susceptibility")]


def test_a_sampler_that_is_not_exact_fails(device, dtype):
    free = Phi4(kappa=0.15, lam=0.0)
    kwargs = dict(lattice_shape=(4, 4), observables=_free_phi4_observables(), device=device, dtype=dtype)
    assert testing.check_sampler(HMC, free, **kwargs)[-1] == "exact"
    error = _fails("exact", testing.check_sampler, WrongMomentaHMC, free, **kwargs)
    assert "standard errors" in str(error)


@attrs.frozen(kw_only=True)
class PickySampler(HMC):
    """Refuses phi4 without declaring which theories it takes."""

    def check_action(self, action):
        if action.theory == "phi4":
            raise ValueError("no phi4, please")


@attrs.frozen(kw_only=True)
class U1ExactClaimingAll(U1Exact):
    theories = ("u1", "phi4")

    @classmethod
    def applies_to(cls, action) -> bool:  # claims every action of its theories, as a plain theories list would
        return action.theory in cls.theories

    def check_action(self, action):  # yet refuses all but u1_wilson: a pair it claims does not build
        if not U1Exact.applies_to(action):
            raise ValueError(f"u1_exact samples only the u1_wilson action, got {type(action).__name__}")


@attrs.frozen(kw_only=True)
class LenientU1Exact(U1Exact):
    def check_action(self, action):
        pass  # accepts everything, yet declares theories = ("u1",)


def test_a_pair_that_cannot_be_built_fails_unless_declared(device):
    phi4 = Phi4(kappa=0.2, lam=0.02)
    _fails("builds", testing.check_sampler, PickySampler, phi4, exactness=False, device=device)
    _fails("builds", testing.check_sampler, U1ExactClaimingAll, phi4, exactness=False, device=device)
    assert testing.check_sampler(U1Exact, phi4, device=device) == ["declared_incompatible"]
    error = _fails("declared_incompatible", testing.check_sampler, LenientU1Exact, phi4, device=device)
    assert "declares (theories ('u1',), applies_to) that it does not sample this 'phi4' action" in str(error)


# -- observables --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class OneLink(Observable):
    """``cos`` of one link: gauge dependent, though declared invariant."""

    theory: ClassVar[str] = "u1"

    def __call__(self, x):
        return torch.cos(x[:, 0, 0, 0])


@attrs.frozen(kw_only=True)
class RawAngle(Observable):
    """The mean link angle as stored: depends on which representative of each angle is stored."""

    theory: ClassVar[str] = "u1"
    invariant: ClassVar[bool] = False

    def __call__(self, x):
        return x.flatten(1).mean(dim=1)


def test_an_observable_that_is_not_invariant_fails(device, dtype):
    action = U1Wilson(beta=2.0)
    assert "symmetry_invariance" in testing.check_observable(Plaquette, action, device=device, dtype=dtype)
    error = _fails("symmetry_invariance", testing.check_observable, OneLink, action, device=device, dtype=dtype)
    assert "declared invariant" in str(error)
    _fails("period_invariance", testing.check_observable, RawAngle, action, device=device, dtype=dtype)
    _fails("theory", testing.check_observable, OneLink, Phi4(kappa=0.2, lam=0.02))


# -- the kit itself -----------------------------------------------------------------------------


def test_the_kit_needs_neither_pytest_nor_hypothesis():
    code = (
        "import sys\n"
        "from lattice_flows import testing, ACTIONS, INTEGRATORS\n"
        "testing.check_action(ACTIONS.get('u1_wilson'))\n"
        "testing.check_integrator(INTEGRATORS.get('omelyan'))\n"
        "assert 'pytest' not in sys.modules and 'hypothesis' not in sys.modules, sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_default_lattices_follow_the_component():
    assert testing.action_lattices(U1Wilson) == [(4, 4), (3, 4)]  # dimensions (2,)
    assert testing.action_lattices(Phi4) == [(4,), (3,), (4, 4), (3, 4), (4, 4, 4), (3, 4, 5)]  # any: 1 to 3

    @attrs.frozen(kw_only=True)
    class Declared(GaussianAction):
        example_lattices: ClassVar[tuple] = ((5,), (2, 7))

    assert testing.action_lattices(Declared) == [(5,), (2, 7)]
    assert testing.check_action(Declared(sigma=1.0))  # and the kit uses them

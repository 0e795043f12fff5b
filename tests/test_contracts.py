"""Contract batteries: every registered action, integrator, observable and sampler must pass these.

They are parametrized over the registries, so a plugin is tested the moment it is registered, with
the parameters it declares in ``example_params``.
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lattice_flows import ACTIONS, FLOWS, INTEGRATORS, OBSERVABLES, SAMPLERS, Action, SpecError, SplitForce
from lattice_flows.spec import build_component


def _action(name: str):
    cls = ACTIONS.get(name)
    return build_component("actions", {"name": name, **cls.example_params}, "test", {})


def _context(action, lattice_shape):
    return {"action": action, "lattice_shape": tuple(lattice_shape)}


@st.composite
def lattices(draw, action, min_size=2, max_size=6):
    dims = action.dimensions or (1, 2, 3)
    n_dims = draw(st.sampled_from(dims))
    return tuple(draw(st.integers(min_size, max_size)) for _ in range(n_dims))


def _fields(action, lattice_shape, batch, seed, device, dtype):
    g = torch.Generator(device=device).manual_seed(seed)
    x = action.sample_prior(batch, lattice_shape, generator=g, dtype=dtype, device=device)
    # Not only canonical representatives: the action must not care.
    return x + 2 * math.pi * torch.randint(-2, 3, x.shape, generator=g, device=device).to(dtype)


def _close(a, b, tol):
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


# -- actions ------------------------------------------------------------------------------------

ACTION_NAMES = ACTIONS.names()


@pytest.mark.parametrize("name", ACTION_NAMES)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4))
def test_action_shape_device_dtype(name, data, seed, batch, device, dtype):
    action = _action(name)
    shape = data.draw(lattices(action))
    x = _fields(action, shape, batch, seed, device, dtype)
    assert x.shape == (batch, *action.field_shape(shape))
    s = action(x)
    assert s.shape == (batch,) and s.dtype == dtype and s.device.type == device.type
    f = action.force(x)
    assert f.shape == x.shape and f.dtype == dtype and f.device.type == device.type


@pytest.mark.parametrize("name", ACTION_NAMES)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4))
def test_action_symmetry_invariance(name, data, seed, batch, device, dtype, tol):
    action = _action(name)
    x = _fields(action, data.draw(lattices(action)), batch, seed, device, dtype)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    y = action.random_symmetry(x, g)
    assert not torch.equal(x, y)
    assert _close(action(y), action(x), tol * x[0].numel())
    assert _close(action(action.normalize(x)), action(x), tol * x[0].numel())


@pytest.mark.parametrize("name", ACTION_NAMES)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 5))
def test_action_batch_independence(name, data, seed, batch, device, dtype, tol):
    action = _action(name)
    x = _fields(action, data.draw(lattices(action)), batch, seed, device, dtype)
    s, f = action(x), action.force(x)
    for i in range(batch):
        assert _close(action(x[i : i + 1])[0], s[i], tol)
        assert _close(action.force(x[i : i + 1])[0], f[i], tol)


@pytest.mark.parametrize("name", ACTION_NAMES)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_action_force_matches_autograd(name, data, seed, device, dtype, tol):
    action = _action(name)
    x = _fields(action, data.draw(lattices(action)), 3, seed, device, dtype)
    autograd = Action.force(action, x)  # the base class's autograd force
    assert _close(action.force(x), autograd, tol * 10)


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_action_prior_is_reproducible(name, device, dtype):
    action = _action(name)
    shape = (4,) * (action.dimensions or (2,))[0]
    draws = [
        action.sample_prior(3, shape, generator=torch.Generator(device=device).manual_seed(7), dtype=dtype, device=device)
        for _ in range(2)
    ]
    assert torch.equal(*draws)
    cold = action.cold_start(2, shape, dtype=dtype, device=device)
    assert cold.shape == draws[0][:2].shape and cold.dtype == dtype


# -- integrators --------------------------------------------------------------------------------

INTEGRATOR_NAMES = INTEGRATORS.names()


def _integrator(name, **changes):
    cls = INTEGRATORS.get(name)
    integrator = build_component("integrators", {"name": name, **cls.example_params}, "test", {})
    return attrs.evolve(integrator, **changes)


def _anharmonic_force(x):
    # S = sum(x^4/4 + 0.3 cos(2x)): a non-linear force, so reversibility is not a linear accident.
    return x**3 - 0.6 * torch.sin(2 * x)


#: The same anharmonic force, whole and as a SplitForce (every integrator takes one; multi-timescale
#: integrators put its parts on their own scales).
FORCES = {
    "whole": _anharmonic_force,
    "split": SplitForce(slow=lambda x: x**3, fast=lambda x: -0.6 * torch.sin(2 * x)),
}


@pytest.mark.parametrize("force", FORCES)
@pytest.mark.parametrize("name", INTEGRATOR_NAMES)
@given(seed=st.integers(0, 2**31 - 1), n_steps=st.integers(1, 20), step_size=st.floats(0.01, 0.2))
def test_integrator_reversible_to_round_off(name, force, seed, n_steps, step_size, device):
    integrator = _integrator(name, step_size=step_size, n_steps=n_steps)
    g = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.randn((3, 5, 4), generator=g, dtype=torch.float64, device=device)
    v0 = torch.randn((3, 5, 4), generator=g, dtype=torch.float64, device=device)
    x1, v1 = integrator.integrate(x0, v0, FORCES[force])
    x2, v2 = integrator.integrate(x1, -v1, FORCES[force])
    assert torch.allclose(x2, x0, rtol=0, atol=1e-11)
    assert torch.allclose(-v2, v0, rtol=0, atol=1e-11)


@pytest.mark.parametrize("name", INTEGRATOR_NAMES)
@pytest.mark.parametrize("action_name", ACTION_NAMES)
def test_integrator_reversible_on_every_action(name, action_name, device):
    action = _action(action_name)
    shape = (6,) * (action.dimensions or (2,))[0]
    g = torch.Generator(device=device).manual_seed(3)
    x0 = action.sample_prior(2, shape, generator=g, dtype=torch.float64, device=device)
    v0 = torch.randn(x0.shape, generator=g, dtype=torch.float64, device=device)
    integrator = _integrator(name, n_steps=25)
    x1, v1 = integrator.integrate(x0, v0, action.force)
    x2, v2 = integrator.integrate(x1, -v1, action.force)
    assert torch.allclose(x2, x0, rtol=0, atol=1e-10) and torch.allclose(-v2, v0, rtol=0, atol=1e-10)


def _harmonic(integrator, device):
    """One unit of time of ``H = (v^2 + x^2)/2`` from ``x = 0, v = 1``: exact ``x(1) = sin 1``."""
    x = torch.zeros(1, 1, dtype=torch.float64, device=device)
    v = torch.ones(1, 1, dtype=torch.float64, device=device)
    x1, v1 = integrator.integrate(x, v, lambda q: q)
    energy_error = abs(float(0.5 * (x1**2 + v1**2).sum() - 0.5))
    return float(x1), energy_error


@pytest.mark.parametrize("name", INTEGRATOR_NAMES)
def test_integrator_error_order_on_harmonic_oscillator(name, device):
    order = INTEGRATORS.get(name).order
    errors, positions = [], []
    for n_steps in (10, 20, 40):
        x1, de = _harmonic(_integrator(name, step_size=1.0 / n_steps, n_steps=n_steps), device)
        errors.append(de)
        positions.append(abs(x1 - math.sin(1.0)))
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.8 * 2**order < coarse / fine < 1.25 * 2**order  # energy error ~ step_size**order
    for coarse, fine in zip(positions, positions[1:]):
        assert 0.8 * 2**order < coarse / fine < 1.25 * 2**order
    assert positions[-1] < 1e-3


@pytest.mark.parametrize("name", INTEGRATOR_NAMES)
def test_integrator_counts_force_evaluations(name, device):
    integrator = _integrator(name, n_steps=7)
    calls = []

    def force(x):
        calls.append(1)
        return x

    x = torch.zeros(1, 2, dtype=torch.float64, device=device)
    integrator.integrate(x, torch.ones_like(x), force)
    assert len(calls) == integrator.force_evaluations


# -- observables --------------------------------------------------------------------------------


def _observable_cases():
    cases = []
    for obs_name in OBSERVABLES.names():
        theory = OBSERVABLES.get(obs_name).theory
        for action_name in ACTION_NAMES:
            if ACTIONS.get(action_name).theory == theory:
                cases.append((obs_name, action_name))
    return cases


@pytest.mark.parametrize("obs_name,action_name", _observable_cases())
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4))
def test_observable_shape_invariance_and_batch_independence(obs_name, action_name, data, seed, batch, device, dtype, tol):
    action = _action(action_name)
    shape = data.draw(lattices(action, min_size=3))
    cls = OBSERVABLES.get(obs_name)
    obs = build_component("observables", {"name": obs_name, **cls.example_params}, "test", _context(action, shape))
    x = _fields(action, shape, batch, seed, device, dtype)
    values = obs(x)
    assert values.shape == (batch,) and values.device.type == device.type
    for i in range(batch):
        assert _close(obs(x[i : i + 1])[0].double(), values[i].double(), tol)
    if cls.invariant:
        y = action.random_symmetry(x, torch.Generator(device=device).manual_seed(seed + 1))
        assert _close(obs(y).double(), values.double(), tol * x[0].numel())


# -- samplers -----------------------------------------------------------------------------------


def _sampler_context(action, shape):
    """What a sampler may ask to be injected: the action, the lattice shape, and a flow of the theory."""
    context = _context(action, shape)
    for flow_name in FLOWS.names():
        cls = FLOWS.get(flow_name)
        if cls.theory == action.theory:
            context["flow"] = build_component("flows", {"name": flow_name, **cls.example_params}, "test", context)
            break
    return context


def _sampler(sampler_name, action, shape):
    params = {"name": sampler_name, **SAMPLERS.get(sampler_name).example_params}
    return build_component("samplers", params, "test", _sampler_context(action, shape))


def _sampler_cases():
    cases = []
    for sampler_name in SAMPLERS.names():
        for action_name in ACTION_NAMES:
            action = _action(action_name)
            try:
                sampler = _sampler(sampler_name, action, (4,) * (action.dimensions or (2,))[0])
                sampler.check_action(action)
            except (SpecError, ValueError):  # not for this theory, or it needs a flow the theory has none of
                continue
            cases.append((sampler_name, action_name))
    return cases


@pytest.mark.parametrize("sampler_name,action_name", _sampler_cases())
def test_sampler_step_contract(sampler_name, action_name, device, dtype):
    action = _action(action_name)
    shape = (4,) * (action.dimensions or (2,))[0]
    sampler = _sampler(sampler_name, action, shape)
    if hasattr(sampler, "flow"):
        sampler.flow.to(dtype=dtype, device=device)

    def run(seed):
        g = torch.Generator(device=device).manual_seed(seed)
        state = sampler.init(action.sample_prior(3, shape, generator=g, dtype=dtype, device=device), action)
        for _ in range(3):
            state, info = sampler.step(state, action, g)
        return state, info

    state, info = run(5)
    assert state.x.shape == (3, *action.field_shape(shape)) and state.x.dtype == dtype
    assert info["accepted"].dtype == torch.bool and info["accepted"].shape == (3,)
    assert info["delta_H"].shape == (3,)
    state2, info2 = run(5)
    assert torch.equal(state.x, state2.x) and torch.equal(info["delta_H"], info2["delta_H"])

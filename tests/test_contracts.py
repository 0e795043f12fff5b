"""Every registered action, integrator, observable and sampler passes the contract kit (lattice_flows.testing).

The tests are parametrized over the registries, so a plugin is tested the moment it is registered, with
the parameters it declares in ``example_params``; Hypothesis draws the seeds, lattices and trajectories
that the kit's checks run on. What each check proves is in the kit's docstrings.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice_flows import ACTIONS, FLOWS, INTEGRATORS, OBSERVABLES, SAMPLERS, testing
from lattice_flows.spec import build_component


def _action(name: str, params=None):
    cls = ACTIONS.get(name)
    return build_component("actions", {"name": name, **cls.example_params, **(params or {})}, "test", {})


@st.composite
def lattices(draw, action, min_size=2, max_size=6):
    n_dims = draw(st.sampled_from(action.dimensions or (1, 2, 3)))
    return tuple(draw(st.integers(min_size, max_size)) for _ in range(n_dims))


ACTION_NAMES = ACTIONS.names()
INTEGRATOR_NAMES = INTEGRATORS.names()
SAMPLER_NAMES = SAMPLERS.names()

# -- actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACTION_NAMES)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 4))
def test_action_contract_on_drawn_lattices(name, data, seed, batch, device, dtype):
    action = _action(name)
    shape = data.draw(lattices(action))
    testing.check_action(action, lattice_shapes=[shape], seed=seed, batch=batch, device=device, dtype=dtype)


@pytest.mark.parametrize("name", ACTION_NAMES)
def test_action_contract_on_its_own_lattices(name, device, dtype):
    ran = testing.check_action(ACTIONS.get(name), device=device, dtype=dtype)
    assert "force_matches_autograd" in ran


# -- integrators --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", INTEGRATOR_NAMES)
@given(seed=st.integers(0, 2**31 - 1), n_steps=st.integers(1, 20), step_size=st.floats(0.01, 0.2))
def test_integrator_reversible_on_drawn_trajectories(name, seed, n_steps, step_size, device):
    testing.check_integrator(INTEGRATORS.get(name), trajectories=[(n_steps, step_size)], seed=seed, device=device)


@pytest.mark.parametrize("name", INTEGRATOR_NAMES)
def test_integrator_contract_on_every_action(name, device):
    ran = testing.check_integrator(INTEGRATORS.get(name), actions=[_action(a) for a in ACTION_NAMES], device=device)
    assert ran == ["reversible", "inputs_unchanged", "reversible_on_action", "error_order", "force_evaluations"]


# -- observables --------------------------------------------------------------------------------


def _observable_cases():
    return [
        (obs_name, action_name)
        for obs_name in OBSERVABLES.names()
        for action_name in ACTION_NAMES
        if testing.observable_applies(OBSERVABLES.get(obs_name), _action(action_name))
    ]


@pytest.mark.parametrize("obs_name,action_name", _observable_cases())
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4))
def test_observable_contract(obs_name, action_name, data, seed, batch, device, dtype):
    action = _action(action_name)
    shape = data.draw(lattices(action, min_size=3))
    testing.check_observable(
        OBSERVABLES.get(obs_name), action, lattice_shapes=[shape], seed=seed, batch=batch, device=device, dtype=dtype
    )


# -- samplers -----------------------------------------------------------------------------------


def _flow_of(action):
    """A registered flow of the action's theory on its first lattice, as built (None if the theory has none)."""
    for flow_name in FLOWS.names():
        cls = FLOWS.get(flow_name)
        if cls.theory == action.theory:
            shape = testing.flow_lattices(cls, action)[0]
            params = {"name": flow_name, **cls.example_params}
            return build_component("flows", params, "test", {"action": action, "lattice_shape": shape})
    return None


#: Every sampler with every action: a pair that does not build fails, unless the sampler declares it
#: does not sample that theory (``Sampler.theories``; the kit then checks that it refuses the action).
SAMPLER_CASES = [(s, a) for s in SAMPLER_NAMES for a in ACTION_NAMES]


@pytest.mark.parametrize("sampler_name,action_name", SAMPLER_CASES)
def test_sampler_contract(sampler_name, action_name, device, dtype):
    action = _action(action_name)
    cls = SAMPLERS.get(sampler_name)
    flow = _flow_of(action) if testing.needs_flow(cls) else None
    ran = testing.check_sampler(cls, action, flow=flow, exactness=False, device=device, dtype=dtype)
    assert ran == (["declared_incompatible"] if testing.declares_incompatible(cls, action) else
                   ["builds", "step_contract", "reproducible"])


#: Actions of the built-in theories where every sampler mixes in the kit's few steps from a prior start
#: (flow_imh through the identity flow proposes from the prior), and lattices whose exact values are cheap.
EXACT_ACTIONS = {
    "u1_wilson": ({"beta": 0.4}, (3, 4)),
    "xy": ({"beta": 0.3}, (4, 3)),  # rows of 3 sites: the transfer matrix is small
    "phi4": ({"kappa": 0.15, "lam": 0.0}, (4, 4)),  # free: <phi^2>, <|M|>, V <M^2> exact
}


#: Samplers that cannot run on an EXACT_ACTIONS lattice, with the one they are checked on instead.
# coupling masks: sizes multiples of 4; the checkerboard: even sizes
EXACT_LATTICES = {"u1_nonequilibrium_transport": {"u1_wilson": (4, 4)}, "u1_nonequilibrium_checkerboard": {"u1_wilson": (4, 4)}}


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
@pytest.mark.parametrize("action_name", [a for a in EXACT_ACTIONS if a in ACTION_NAMES])
def test_sampler_is_exact(sampler_name, action_name, device, dtype):
    """<exp(-delta_H)> = 1 and the exact values of the theory's observables, within 5 standard errors
    (64 chains x 40 steps after 20; flows are the identity: the sampler's own machinery is what is tested)."""
    params, shape = EXACT_ACTIONS[action_name]
    shape = EXACT_LATTICES.get(sampler_name, {}).get(action_name, shape)
    action = _action(action_name, params)
    cls = SAMPLERS.get(sampler_name)
    observables = [
        OBSERVABLES.get(o) for o in OBSERVABLES.names()
        if testing.observable_applies(OBSERVABLES.get(o), action) and not OBSERVABLES.get(o).example_params
    ]
    ran = testing.check_sampler(cls, action, lattice_shape=shape, observables=observables, device=device, dtype=dtype)
    assert ran[-1] == "exact" or ran == ["declared_incompatible"]

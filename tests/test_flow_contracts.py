"""Every registered flow (and the toy affine flow of tests/toy_plugins.py) passes the kit's flow contract.

:func:`lattice_flows.testing.check_flow` builds each flow from its ``example_params`` (widths drawn by
Hypothesis where it has ``hidden``) on the lattices it accepts, randomises its weights first (a flow that
starts as the identity would pass trivially) and compares fields after ``action.normalize``.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattice_flows import ACTIONS, FLOWS, Simulation, SpecError, testing
from lattice_flows.spec import build_component

FLOW_NAMES = FLOWS.names()


def _action_for(flow_cls):
    # a theory's plain action first: the Schwinger actions (theory u1 too) cost a dense determinant per call
    names = sorted(ACTIONS.names(), key=lambda n: ACTIONS.get(n).__module__.startswith("lattice_flows_schwinger"))
    for name in names:
        cls = ACTIONS.get(name)
        if cls.theory == flow_cls.theory:
            return build_component("actions", {"name": name, **cls.example_params}, "test", {})
    raise AssertionError(f"no registered action of theory {flow_cls.theory!r} for the flow {flow_cls.__name__}")


@pytest.mark.parametrize("name", FLOW_NAMES)
@settings(max_examples=5)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3))
def test_flow_contract(name, data, seed, batch, device, dtype):
    cls = FLOWS.get(name)
    params = {}
    if "hidden" in attrs.fields_dict(cls.Config):
        params["hidden"] = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=2))
    ran = testing.check_flow(cls, _action_for(cls), params=params, seed=seed, batch=batch, device=device, dtype=dtype)
    assert {"inverse", "logdet_matches_jacobian", "gradients", "starts_near_identity", "spec_round_trip"} <= set(ran)


def test_flow_lattices_come_from_the_flow():
    u1 = _action_for(FLOWS.get("u1_stout"))
    assert testing.flow_lattices(FLOWS.get("u1_stout"), u1) == [(4, 4), (4, 8), (8, 4)]  # multiples of 4
    assert testing.refused_lattice(FLOWS.get("u1_stout"), u1) == (5, 4)
    assert testing.flow_lattices(FLOWS.get("u1_plaquette_poisson"), u1)[0] == (3, 4)  # any 2D lattice


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_flow_spec_round_trip_through_a_simulation(name):
    cls = FLOWS.get(name)
    action = _action_for(cls)
    shape = testing.flow_lattices(cls, action)[1]
    spec = {
        "lattice": {"shape": list(shape)},
        "action": {"name": ACTIONS.name_of(type(action)), **action.to_spec()},
        "flow": {"name": name, **cls.example_params},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
    }
    sim = Simulation.from_spec(spec)
    assert Simulation.from_spec(sim.to_spec()) == sim
    assert sim.to_spec()["flow"]["name"] == name
    refused = testing.refused_lattice(cls, action)
    if refused is not None:
        with pytest.raises(SpecError, match=r"spec\['lattice'\]\['shape'\]"):
            Simulation.from_spec({**spec, "lattice": {"shape": list(refused)}})


def test_the_toy_flow_passes(toy_plugins):
    ran = testing.check_flow(toy_plugins.AffineFlow, toy_plugins.GaussianAction)
    assert "refuses_lattice" not in ran  # it takes any lattice

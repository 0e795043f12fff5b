"""FTHMC and flow independence Metropolis: exactness with any flow, and reduction to HMC."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from exact_checks import check_against_exact as _check
from lattice_flows import ACTIONS, FLOWS, Simulation
from lattice_flows.spec import build_component
from lattice_flows_hmc.flow_samplers import FTHMC, LatentAction


def u1_spec(sampler, flow, **changes):
    spec = {
        "lattice": {"shape": [4, 4]},
        "action": {"name": "u1_wilson", "beta": 1.5},
        "flow": flow,
        "sampler": sampler,
        "observables": ["plaquette", "topological_charge"],
        "n_chains": 8,
        "n_thermalization": 5,
        "n_trajectories": 20,
        "seed": 3,
    }
    spec.update(changes)
    return spec


LEAPFROG = {"name": "leapfrog", "step_size": 0.15, "n_steps": 8}
NESTED = {"name": "nested_leapfrog", "step_size": 0.3, "n_steps": 4, "n_inner": 3}


def test_fthmc_through_the_identity_flow_is_hmc(toy_plugins):
    hmc = Simulation.from_spec(u1_spec({"name": "hmc", "integrator": LEAPFROG}, None))
    fthmc = Simulation.from_spec(u1_spec({"name": "fthmc", "integrator": LEAPFROG}, {"name": "identity_u1"}))
    a, b = hmc.run(), fthmc.run()
    assert a["accepted"].tolist() == b["accepted"].tolist()
    assert (a["accepted"].mean() > 0.5) and not a["accepted"].all()  # both outcomes occur
    pd.testing.assert_series_equal(a["delta_H"], b["delta_H"], rtol=0, atol=1e-10)
    pd.testing.assert_series_equal(a["plaquette"], b["plaquette"], rtol=0, atol=1e-12)
    assert a["topological_charge"].tolist() == b["topological_charge"].tolist()


def _action_of_theory(theory):
    """The first registered action of ``theory``, with its example parameters."""
    for name in ACTIONS.names():
        cls = ACTIONS.get(name)
        if cls.theory == theory:
            return build_component("actions", {"name": name, **cls.example_params}, "test", {})
    pytest.skip(f"no registered action of theory {theory!r}")


def _randomized_flow(name, shape, seed=0, scale=0.2):
    cls = FLOWS.get(name)
    flow = build_component(
        "flows", {"name": name, **cls.example_params}, "test", {"lattice_shape": shape, "action": _action_of_theory(cls.theory)}
    ).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow


@pytest.mark.parametrize("name", [n for n in FLOWS.names()])
def test_fthmc_trajectory_is_reversible_through_every_flow(name):
    shape = (4, 4)
    flow = _randomized_flow(name, shape)
    action = _action_of_theory(FLOWS.get(name).theory)
    sampler = FTHMC(integrator=build_component("integrators", LEAPFROG, "test", {}), flow=flow)
    g = torch.Generator().manual_seed(1)
    z0 = action.sample_prior(2, shape, generator=g, dtype=torch.float64, device="cpu")
    v0 = torch.randn(z0.shape, generator=g, dtype=torch.float64)
    latent = LatentAction(action, flow)
    z1, v1 = sampler.integrator.integrate(z0, v0, latent.force)
    z2, v2 = sampler.integrator.integrate(z1, -v1, latent.force)
    assert torch.allclose(z2, z0, rtol=0, atol=1e-10) and torch.allclose(-v2, v0, rtol=0, atol=1e-10)
    assert all(p.requires_grad for p in flow.parameters())  # sampling leaves training state alone


@pytest.mark.parametrize("fast", ["action", "flow"])
@pytest.mark.parametrize("name", [n for n in FLOWS.names()])
def test_fthmc_nested_trajectory_is_reversible_through_every_flow(name, fast):
    shape = (4, 4)
    flow = _randomized_flow(name, shape)
    action = _action_of_theory(FLOWS.get(name).theory)
    # a short step: random weights make some flows (affine scales e^s) steep enough to blow up at 0.3
    integrator = build_component("integrators", {**NESTED, "step_size": 0.1}, "test", {})
    g = torch.Generator().manual_seed(2)
    z0 = action.sample_prior(2, shape, generator=g, dtype=torch.float64, device="cpu")
    v0 = torch.randn(z0.shape, generator=g, dtype=torch.float64)
    force = LatentAction(action, flow).split_force(fast)
    z1, v1 = integrator.integrate(z0, v0, force)
    z2, v2 = integrator.integrate(z1, -v1, force)
    assert torch.allclose(z2, z0, rtol=0, atol=1e-10) and torch.allclose(-v2, v0, rtol=0, atol=1e-10)
    # The two parts add up to the whole latent force.
    whole = LatentAction(action, flow).force(z0)
    assert torch.allclose(force(z0), whole, rtol=0, atol=1e-12)


def _untrained_flow_summary(sampler, n_trajectories, weight_scale, beta):
    # A random flow is a poor map (the flow samplers must be exact anyway); its size sets how poor.
    # Independence proposals from an untrained flow are near-uniform, so flow_imh is tested at a
    # small beta where they are still accepted often enough to measure something.
    name = "u1_stout"
    spec = u1_spec(
        sampler,
        {"name": name, **FLOWS.get(name).example_params},
        action={"name": "u1_wilson", "beta": beta},
        n_chains=16,
        n_thermalization=20,
        n_trajectories=n_trajectories,
    )
    sim = Simulation.from_spec(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sim.flow.parameters():
            p.copy_(weight_scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return sim.summary(sim.run())


@pytest.mark.parametrize(
    "sampler, weight_scale, beta",
    [
        ({"name": "fthmc", "integrator": LEAPFROG}, 0.2, 1.5),
        ({"name": "fthmc", "integrator": NESTED, "fast_force": "action"}, 0.2, 1.5),
        ({"name": "flow_imh"}, 0.2, 0.3),
    ],
)
def test_flow_samplers_are_exact_with_an_untrained_flow(sampler, weight_scale, beta):
    summary = _untrained_flow_summary(sampler, 400, weight_scale, beta)
    _check(summary, "plaquette", 0.006)
    _check(summary, "topological_charge^2", 0.15 * summary.loc["topological_charge^2", "exact"])
    _check(summary, "exp(-delta_H)", 0.05)


@pytest.mark.parametrize("sampler", [{"name": "fthmc", "integrator": LEAPFROG}, {"name": "flow_imh"}])
def test_flow_samplers_with_a_trained_flow_on_a_gaussian(sampler, toy_plugins):
    spec = {
        "lattice": {"shape": [3, 2]},
        "action": {"name": "gaussian", "sigma": 2.0},
        "flow": {"name": "affine"},
        "training": {"n_steps": 200, "lr": 0.05, "schedule": "cosine"},
        "sampler": sampler,
        "observables": [],
        "n_chains": 16,
        "n_thermalization": 10,
        "n_trajectories": 200,
    }
    sim = Simulation.from_spec(spec)
    sim.train(progress=False)
    table = sim.run()
    assert table["accepted"].mean() > 0.95  # a near-perfect flow: nearly everything is accepted


def test_flow_samplers_need_a_flow():
    from lattice_flows import SpecError

    with pytest.raises(SpecError, match=r"spec\['sampler'\]: fthmc needs a 'flow' section in the spec"):
        Simulation.from_spec(u1_spec({"name": "fthmc", "integrator": LEAPFROG}, None))

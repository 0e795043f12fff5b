"""Auxiliary fields refreshed once per update (Action.refresh), and per-trajectory statistics in the table.

The toy (tests/hamiltonian_toys.py, ``pseudo_boson``): ``S(x, phi) = sum x^2/2 + lam x^4 + (1 + c x^2) phi^2/2``
with the heat bath ``phi = eta / sqrt(1 + c x^2)``; the marginal of each component is
``∝ exp(-x^2/2 - lam x^4) / sqrt(1 + c x^2)``, whose moments come from numerical quadrature. HMC, FTHMC and
flow independence Metropolis must all reproduce them; without the auxiliary field (``phi = 0``) ``<x^2>``
would be that of ``exp(-x^2/2 - lam x^4)``, many standard errors away.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

import hamiltonian_toys as toys
from exact_checks import check_against_exact
from lattice_flows import Action, ACTIONS, Simulation
from lattice_flows.spec import build_component

LAM, C = 0.1, 2.0


@pytest.fixture
def hamiltonian_toys(fake_entry_points):
    fake_entry_points.update(toys.entry_points())
    return toys


def _spec(sampler, **changes):
    spec = {
        "lattice": {"shape": [4]},
        "action": {"name": "pseudo_boson", "lam": LAM, "c": C},
        "observables": ["pb_x_squared", "pb_x_fourth"],
        "sampler": sampler,
        "n_chains": 16, "n_thermalization": 20, "n_trajectories": 300, "seed": 5,
    }
    spec.update(changes)
    return spec


LEAPFROG = {"name": "leapfrog", "step_size": 0.3, "n_steps": 4}
SAMPLERS = {
    "hmc": ({"name": "hmc", "integrator": LEAPFROG}, {}),
    "hmc_omelyan": ({"name": "hmc", "integrator": {"name": "omelyan", "step_size": 0.6, "n_steps": 2}}, {}),
    "fthmc": ({"name": "fthmc", "integrator": LEAPFROG}, {"flow": {"name": "pb_affine", "init_log_scale": -0.2}}),
    "flow_imh": ({"name": "flow_imh"}, {"flow": {"name": "pb_affine", "init_log_scale": -0.2}}),
}


def test_the_quadrature_is_right():
    # with c -> 0 the marginal is exp(-x^2/2 - lam x^4); with lam = 0 as well, a standard normal
    assert toys.pseudo_boson_moment(0.0, 1e-300, 2) == pytest.approx(1.0, abs=1e-10)
    assert toys.pseudo_boson_moment(0.0, 1e-300, 4) == pytest.approx(3.0, abs=1e-9)
    # lam = 0, c = 2: <x^2> = <x^2 / sqrt(1 + 2x^2)>_N / <1 / sqrt(1 + 2x^2)>_N, by another route (u = x^2 substitution)
    num = integrate.quad(lambda u: u**0.5 * math.exp(-u / 2) / math.sqrt(1 + 2 * u), 0, math.inf)[0]
    den = integrate.quad(lambda u: u**-0.5 * math.exp(-u / 2) / math.sqrt(1 + 2 * u), 0, math.inf)[0]
    assert toys.pseudo_boson_moment(0.0, 2.0, 2) == pytest.approx(num / den, rel=1e-8)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_reproduces_the_exact_marginal(hamiltonian_toys, name):
    sampler, extra = SAMPLERS[name]
    sim = Simulation.from_spec(_spec(sampler, **extra))
    summary = sim.summary(sim.run(progress=False))
    check_against_exact(summary, "pb_x_squared", 0.02)
    check_against_exact(summary, "pb_x_fourth", 0.06)
    check_against_exact(summary, "exp(-delta_H)", 0.05)
    # what the run would give without the auxiliary field: far off, so the check above tests the refresh
    without = toys.pseudo_boson_moment(LAM, 1e-300, 2)
    assert abs(summary.loc["pb_x_squared", "mean"] - without) > 8 * summary.loc["pb_x_squared", "error"]
    assert 0.3 < summary.loc["accepted", "mean"] < 1.0


def test_the_refreshed_actions_work_reaches_the_table_and_the_summary(hamiltonian_toys):
    nested = {"name": "nested_leapfrog", "step_size": 0.6, "n_steps": 2, "n_inner": 2}
    sim = Simulation.from_spec(_spec({"name": "hmc", "integrator": nested}, n_trajectories=10))
    table = sim.run(progress=False)
    assert list(table.columns[:5]) == ["chain", "trajectory", "accepted", "delta_H", "action.solves"]
    # H before and after (2 evaluations of S) and every force evaluation of the trajectory
    assert (table["action.solves"] == 2 + sim.sampler.integrator.force_evaluations).all()
    summary = sim.summary(table)
    assert summary.loc["action.solves", "mean"] == 2 + 5 and summary.loc["action.solves", "error"] == 0.0
    # flow_imh evaluates S(., phi) at the proposal and the current field
    imh = Simulation.from_spec(_spec({"name": "flow_imh"}, flow={"name": "pb_affine"}, n_trajectories=10))
    assert (imh.run(progress=False)["action.solves"] == 2).all()


def test_without_auxiliary_fields_refresh_draws_nothing_and_adds_no_column(hamiltonian_toys):
    g = torch.Generator().manual_seed(0)
    for name in ACTIONS.names():
        cls = ACTIONS.get(name)
        if cls.refresh is Action.refresh:  # the actions without auxiliary fields (not the toy's, nor schwinger)
            action = build_component("actions", {"name": name, **cls.example_params}, "test", {})
            state = g.get_state()
            assert action.refresh(torch.zeros(2, 3), g) is action, name
            assert torch.equal(g.get_state(), state) and action.statistics() == {}, name
    sim = Simulation.from_spec({
        "lattice": {"shape": [4, 4]}, "action": {"name": "u1_wilson", "beta": 1.0}, "observables": ["plaquette"],
        "sampler": {"name": "hmc", "integrator": LEAPFROG}, "n_chains": 2, "n_thermalization": 1, "n_trajectories": 2,
    })
    assert list(sim.run(progress=False).columns) == ["chain", "trajectory", "accepted", "delta_H", "plaquette"]


def test_fthmc_draws_the_auxiliary_field_from_the_current_x(hamiltonian_toys, monkeypatch):
    seen = []
    original = toys.PseudoBoson.refresh

    def spy(self, x, generator):
        seen.append(x.clone())
        return original(self, x, generator)

    monkeypatch.setattr(toys.PseudoBoson, "refresh", spy)
    sim = Simulation.from_spec(_spec(SAMPLERS["fthmc"][0], flow={"name": "pb_affine", "init_log_scale": -0.2}))
    seen.clear()  # the build's finiteness check evaluates one refreshed action, on a field of its own
    sampler, action = sim.sampler, sim.action
    state = sampler.init(action.sample_prior(3, (4,), generator=torch.Generator().manual_seed(1), dtype=torch.float64, device="cpu"), action)
    for _ in range(3):
        before = state
        state, _ = sampler.step(state, action, torch.Generator().manual_seed(2))
        x_of_z, _ = sampler.flow(before.z)
        assert torch.allclose(seen[-1], x_of_z, rtol=0, atol=1e-12)
    assert len(seen) == 3

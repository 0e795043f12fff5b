"""``nonequilibrium``: non-equilibrium MCMC (a switching protocol from a prior action, weighted by its work).

Checked against the exact solution of 2D U(1) (``lattice_flows_u1.exact``), not against another sampler: with a
prior at a smaller beta the chain must reproduce the target's plaquette and ``<Q^2>``, and ``<exp(-delta_H)> = 1``.
Fixed seeds; tolerances in standard errors of the Gamma method (``Simulation.summary``).
"""

from __future__ import annotations

import math

import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.errors import SpecError
from lattice_flows.forces import autograd_force
from lattice_flows.registry import ACTIONS, SAMPLERS
from lattice_flows_hmc.nonequilibrium import InterpolatedAction, NonEquilibrium

from exact_checks import check_against_exact

INTEGRATOR = {"name": "leapfrog", "step_size": 0.1, "n_steps": 5}


def _spec(beta: float, shape, prior_beta: float | None, n_switch: int, n_trajectories: int, **extra) -> dict:
    sampler = {"name": "nonequilibrium", "n_switch": n_switch, "integrator": INTEGRATOR}
    if prior_beta is not None:
        sampler["prior"] = {"name": "u1_wilson", "beta": prior_beta}
    return {
        "lattice": {"shape": list(shape)}, "action": {"name": "u1_wilson", "beta": beta}, "sampler": sampler,
        "observables": ["plaquette", "topological_charge"], "n_chains": 16, "n_thermalization": 10,
        "n_trajectories": n_trajectories, "seed": 3, "dtype": "float64", **extra,
    }


def test_interpolated_wilson_actions_are_the_wilson_action_at_the_interpolated_beta():
    action, prior = ACTIONS.get("u1_wilson")(beta=6.0), ACTIONS.get("u1_wilson")(beta=2.0)
    x = (torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * math.pi
    for lam in (0.0, 0.3, 1.0):
        mixed = InterpolatedAction(prior, action, lam)
        same = ACTIONS.get("u1_wilson")(beta=2.0 + 4.0 * lam)
        assert torch.allclose(mixed(x), same(x), atol=1e-12)
        assert torch.allclose(mixed.force(x), same.force(x), atol=1e-12)
        assert torch.allclose(mixed.force(x), autograd_force(mixed, x), atol=1e-10)


def test_without_a_prior_there_is_no_work_and_every_update_is_accepted():
    sim = Simulation.from_spec(_spec(2.0, (4, 4), None, 3, 5))
    table = sim.run(progress=False)
    assert float(table["work"].abs().max()) < 1e-9 and bool(table["accepted"].all())
    assert "prior" not in sim.to_spec()["sampler"]  # a left-out optional component stays out of the spec


def test_the_first_update_takes_its_proposal():
    sim = Simulation.from_spec(_spec(3.0, (4, 4), 1.0, 4, 3, n_thermalization=0))
    table = sim.run(progress=False)
    first = table[table["trajectory"] == 0]
    assert len(first) == 16
    assert bool(first["accepted"].all()) and float(first["delta_H"].abs().max()) == 0.0


def test_a_prior_of_another_theory_and_actions_with_auxiliary_fields_are_refused():
    sampler = SAMPLERS.get("nonequilibrium")
    assert not sampler.applies_to(ACTIONS.get("schwinger")) and sampler.applies_to(ACTIONS.get("u1_wilson"))
    spec = _spec(3.0, (4, 4), 1.0, 4, 3)
    spec["sampler"]["prior"] = {"name": "phi4", "kappa": 0.1, "lam": 0.0}
    with pytest.raises(SpecError, match="both must be of one theory"):
        Simulation.from_spec(spec)
    spec = _spec(3.0, (4, 4), 1.0, 4, 3)
    spec["action"] = {"name": "schwinger", "beta": 2.0, "mass": 0.3}
    with pytest.raises(SpecError, match="auxiliary fields"):
        Simulation.from_spec(spec)


def test_nonequilibrium_mcmc_reproduces_the_exact_values():
    """4x4 at beta 4 from a prior at beta 1 in 12 steps: plaquette, <Q^2> and <exp(-delta_H)> within 4 standard
    errors of exact (16 chains x 300 updates; about 10 s)."""
    sim = Simulation.from_spec(_spec(4.0, (4, 4), 1.0, 12, 300))
    table = sim.run(progress=False)
    summary = sim.summary(table)
    for row in ("plaquette", "topological_charge^2", "delta_H_identity(K=2)"):
        check_against_exact(summary, row, max_error=0.1)  # the summary's exact values: lattice_flows_u1.exact
    # the chain accepts often enough to be a test of the weights, not of a frozen start
    assert 0.1 < summary.loc["accepted", "mean"] < 0.95
    assert isinstance(sim.sampler, NonEquilibrium)


# -- the defect prior: u1_wilson_defect ------------------------------------------------------


def test_the_defect_action_is_wilson_off_the_block_and_refuses_a_lattice_without_room():
    from lattice_flows_u1.defect import U1WilsonDefect

    x = (torch.rand(2, 2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 - 1) * math.pi
    wilson = ACTIONS.get("u1_wilson")(beta=3.0)
    same = U1WilsonDefect(beta=3.0, defect_beta=3.0, defect_shape=[2, 3])
    assert torch.allclose(same(x), wilson(x), atol=1e-12) and torch.allclose(same.force(x), wilson.force(x), atol=1e-12)
    free = U1WilsonDefect(beta=3.0, defect_beta=0.0, defect_shape=[2, 3])
    from lattice_flows_u1.geometry import plaquette_angles
    off_block = (1 - torch.cos(plaquette_angles(x)))
    off_block[:, :2, :3] = 0
    assert torch.allclose(free(x), 3.0 * off_block.sum(dim=(1, 2)), atol=1e-12)
    assert torch.allclose(free.force(x), autograd_force(free, x), atol=1e-10)
    with pytest.raises(ValueError, match=r"the defect \[2, 3\] does not fit on the lattice \[4, 2\]"):
        free.field_shape((4, 2))
    assert not SAMPLERS.get("u1_exact").applies_to(free)


def test_nonequilibrium_from_a_defect_prior_reproduces_the_exact_values():
    """4x4 at beta 3, the prior free on a 1x2 block, 8 switching steps: plaquette and <Q^2> within 4 standard
    errors of exact (16 chains x 300 updates)."""
    spec = _spec(3.0, (4, 4), None, 8, 300)
    spec["sampler"]["prior"] = {"name": "u1_wilson_defect", "beta": 3.0, "defect_beta": 0.0, "defect_shape": [1, 2]}
    sim = Simulation.from_spec(spec)
    summary = sim.summary(sim.run(progress=False))
    for row in ("plaquette", "topological_charge^2", "delta_H_identity(K=2)"):
        check_against_exact(summary, row, max_error=0.1)  # the summary's exact values: lattice_flows_u1.exact

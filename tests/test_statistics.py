"""Samplers against the exact solution of 2D U(1) (fixed seeds; tolerances in standard errors).

Each check asks for ``|mean - exact| < 4 sigma`` with ``sigma`` the Gamma-method error (Wolff),
and also bounds ``sigma`` itself so that a noisy run cannot pass by being uninformative. With
fixed seeds the outcome is deterministic; 4 sigma keeps a correct sampler far from the edge.
"""

from __future__ import annotations

import pytest

from exact_checks import check_against_exact as _check
from lattice_flows import Simulation



def _summary(beta, shape, sampler, n_chains, n_thermalization, n_trajectories, seed):
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": list(shape)},
            "action": {"name": "u1_wilson", "beta": beta},
            "sampler": sampler,
            "observables": ["plaquette", "topological_charge", {"name": "wilson_loop", "R": 2, "T": 2, "column": "W22"}],
            "n_chains": n_chains,
            "n_thermalization": n_thermalization,
            "n_trajectories": n_trajectories,
            "seed": seed,
        }
    )
    return sim.summary(sim.run())


@pytest.mark.parametrize(
    "beta, shape, integrator",
    [
        (2.0, (8, 8), {"name": "leapfrog", "step_size": 0.2, "n_steps": 10}),
        (1.0, (6, 10), {"name": "omelyan", "step_size": 0.4, "n_steps": 5}),
        (4.0, (8, 8), {"name": "leapfrog", "step_size": 0.125, "n_steps": 16}),
    ],
)
def test_hmc_reproduces_exact_values(beta, shape, integrator):
    summary = _summary(beta, shape, {"name": "hmc", "integrator": integrator}, 32, 100, 500, seed=11)
    _check(summary, "plaquette", 0.003)
    _check(summary, "W22", 0.005)
    _check(summary, "topological_charge^2", 0.15 * summary.loc["topological_charge^2", "exact"])
    _check(summary, "exp(-delta_H)", 0.05)
    assert 0.6 < summary.loc["accepted", "mean"] < 1.0


@pytest.mark.parametrize("beta, shape", [(2.0, (8, 8)), (6.0, (8, 8)), (1.0, (4, 6))])
def test_u1_exact_sampler_reproduces_exact_values(beta, shape):
    summary = _summary(beta, shape, "u1_exact", 64, 0, 150, seed=3)
    _check(summary, "plaquette", 0.003)
    _check(summary, "W22", 0.005)
    _check(summary, "topological_charge^2", 0.1 * summary.loc["topological_charge^2", "exact"])
    # independent samples: no autocorrelation
    assert abs(summary.loc["plaquette", "tau_int"] - 0.5) < 0.15


def test_hmc_step_size_is_tuned_during_thermalization_only():
    spec = {
        "lattice": {"shape": [8, 8]},
        "action": {"name": "u1_wilson", "beta": 4.0},
        "sampler": {
            "name": "hmc",
            "integrator": {"name": "leapfrog", "step_size": 0.5, "n_steps": 8},
            "target_acceptance": 0.8,
        },
        "observables": ["plaquette"],
        "n_chains": 16,
        "n_thermalization": 150,
        "n_trajectories": 300,
        "seed": 5,
    }
    sim = Simulation.from_spec(spec)
    table = sim.run()
    tuned = table.attrs["sampler"]["integrator"]["step_size"]
    assert tuned < 0.4  # 0.5 accepts almost nothing at beta = 4
    assert sim.to_spec()["sampler"]["integrator"]["step_size"] == 0.5  # the spec is not rewritten
    summary = sim.summary(table)
    assert abs(summary.loc["accepted", "mean"] - 0.8) < 0.1
    _check(summary, "plaquette", 0.003)  # fixed after thermalization: still exact
    untuned = Simulation.from_spec({**spec, "sampler": {**spec["sampler"], "target_acceptance": 0.0}}).run()
    assert untuned.attrs["sampler"]["integrator"]["step_size"] == 0.5
    assert untuned["accepted"].mean() < 0.5

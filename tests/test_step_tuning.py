"""Step-size tuning (``target_acceptance``) keeps the trajectory length: the step shrinks, ``n_steps`` grows.

Before this rule the step was tuned at fixed ``n_steps``: a target acceptance that needed a five times
smaller step made trajectories five times shorter, and FTHMC through a poor flow random-walked (a
plaquette 6 standard errors off after 200 updates, issue 13).
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from exact_checks import check_against_exact
from lattice_flows import Simulation
from lattice_flows.errors import SpecError
from lattice_flows.simulation import RunInterrupted
from lattice_flows_hmc.hmc import COSTLY_TUNING, tune_step_size

BASE = {
    "lattice": {"shape": [8, 8]},
    "action": {"name": "u1_wilson", "beta": 4.0},
    "observables": ["plaquette"],
    "n_chains": 8,
    "n_thermalization": 40,
    "n_trajectories": 2,
    "seed": 5,
}
FLOW = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 3.0},
    "flow": {"name": "u1_plaquette_coupling", "kernel": "ncp", "n_layers": 2, "hidden": [4], "n_mixture": 2},
    "observables": ["plaquette"],
    "n_chains": 4,
    "n_thermalization": 30,
    "n_trajectories": 2,
    "seed": 3,
}


def _tuned(spec: dict) -> dict:
    return Simulation.from_spec(spec).run(progress=False).attrs["sampler"]


def _assert_length_kept(tuned: dict, length: float) -> None:
    step, n = tuned["integrator"]["step_size"], tuned["integrator"]["n_steps"]
    assert abs(step * n - length) <= 0.5 * step + 1e-12, (step, n, length)
    assert tuned["trajectory_length"] == length


@pytest.mark.parametrize(
    "integrator",
    [
        {"name": "leapfrog", "step_size": 0.5, "n_steps": 2},
        {"name": "omelyan", "step_size": 1.0, "n_steps": 1},
        {"name": "nested_leapfrog", "step_size": 0.5, "n_steps": 2, "n_inner": 2},
    ],
    ids=lambda i: i["name"],
)
def test_hmc_tuning_keeps_the_trajectory_length(integrator):
    # At beta = 4 on 8x8 an acceptance of 0.9 needs a step several times smaller than 0.5 (1.0 for Omelyan).
    tuned = _tuned({**BASE, "sampler": {"name": "hmc", "target_acceptance": 0.9, "integrator": integrator}})
    assert tuned["integrator"]["step_size"] < 0.5 * integrator["step_size"]
    assert tuned["integrator"]["n_steps"] >= 2 * integrator["n_steps"]
    _assert_length_kept(tuned, 1.0)


def test_fthmc_tuning_keeps_the_trajectory_length():
    # An untrained flow at beta = 3: the latent action is stiff, and acceptance 0.9 needs a small step.
    sampler = {"name": "fthmc", "target_acceptance": 0.9, "integrator": {"name": "leapfrog", "step_size": 0.5, "n_steps": 2}}
    tuned = _tuned({**FLOW, "sampler": sampler})
    assert tuned["integrator"]["n_steps"] >= 4
    _assert_length_kept(tuned, 1.0)


def test_an_explicit_trajectory_length_is_kept():
    sampler = {
        "name": "hmc", "target_acceptance": 0.8, "trajectory_length": 0.6,
        "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10},
    }
    _assert_length_kept(_tuned({**BASE, "sampler": sampler}), 0.6)


def _fake_sampler(step_size: float, n_steps: int, target: float = 0.8):
    return Simulation.from_spec(
        {**BASE, "sampler": {"name": "hmc", "target_acceptance": target, "integrator": {"name": "leapfrog", "step_size": step_size, "n_steps": n_steps}}}
    ).sampler


def test_the_length_does_not_drift_over_many_updates():
    # Rounding n_steps at every update must not move the length: it is fixed once, from the spec.
    sampler = _fake_sampler(0.07, 7)
    generator = torch.Generator().manual_seed(0)
    steps = []
    for t in range(300):
        delta_H = torch.rand(16, generator=generator, dtype=torch.float64) * (0.1 + 3 * (t % 3 == 0))
        sampler = tune_step_size(sampler, {"delta_H": delta_H}, t)
        steps.append(sampler.integrator.step_size)
        assert sampler.trajectory_length == 0.07 * 7
        assert sampler.integrator.n_steps == max(1, round(0.07 * 7 / sampler.integrator.step_size))
    assert max(steps) / min(steps) > 1.5  # the step did move


def test_the_step_never_exceeds_the_trajectory():
    # Every update accepted (delta_H = 0): the step grows, but one step is at most the whole trajectory.
    sampler = _fake_sampler(0.3, 2)
    for t in range(50):
        sampler = tune_step_size(sampler, {"delta_H": torch.zeros(8, dtype=torch.float64)}, t)
    assert sampler.integrator.step_size == pytest.approx(0.6, rel=1e-12)
    assert sampler.integrator.n_steps == 1


def test_tuned_hmc_is_still_exact():
    # The tuned chain (fixed step after thermalization) reproduces the exact plaquette within 4 standard errors.
    spec = {
        **BASE, "observables": ["plaquette", "topological_charge"], "n_chains": 16, "n_thermalization": 60, "n_trajectories": 150,
        "sampler": {"name": "hmc", "target_acceptance": 0.8, "integrator": {"name": "leapfrog", "step_size": 0.5, "n_steps": 2}},
    }
    sim = Simulation.from_spec(spec)
    table = sim.run(progress=False)
    summary = sim.summary(table)
    check_against_exact(summary, "plaquette", 0.003)
    assert 0.65 < summary.loc["accepted", "mean"] < 0.95


def test_a_costly_tuning_is_a_warning(caplog):
    # A step 4.5 times smaller than the spec's at the same length: a log warning with the numbers.
    spec = {**BASE, "sampler": {"name": "hmc", "target_acceptance": 0.9, "integrator": {"name": "leapfrog", "step_size": 0.5, "n_steps": 2}}}
    with caplog.at_level(logging.WARNING, logger="lattice_flows"):
        tuned = _tuned(spec)
    n = tuned["integrator"]["n_steps"]
    assert n > COSTLY_TUNING * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"takes {n} steps" in warnings[0] and "the spec's 2" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lattice_flows"):
        _tuned({**spec, "sampler": {**spec["sampler"], "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}}})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_costly_fthmc_tuning_blames_the_flow(caplog):
    sampler = {"name": "fthmc", "target_acceptance": 0.95, "integrator": {"name": "leapfrog", "step_size": 1.0, "n_steps": 1}}
    with caplog.at_level(logging.WARNING, logger="lattice_flows"):
        tuned = _tuned({**FLOW, "sampler": sampler})
    assert tuned["integrator"]["n_steps"] > COSTLY_TUNING
    assert any("train it longer" in r.getMessage() for r in caplog.records)


def test_trajectory_length_without_tuning_is_a_spec_error():
    spec = {**BASE, "sampler": {"name": "hmc", "trajectory_length": 1.0, "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}}}
    with pytest.raises(SpecError, match=r"spec\['sampler'\]\['trajectory_length'\].*target_acceptance"):
        Simulation.from_spec(spec)
    with pytest.raises(SpecError, match=r"spec\['sampler'\]\['trajectory_length'\].*>= 0"):
        Simulation.from_spec({**spec, "sampler": {**spec["sampler"], "target_acceptance": 0.8, "trajectory_length": -1.0}})


@pytest.mark.parametrize("sampler", ["hmc", "fthmc"])
def test_a_run_stopped_while_tuning_resumes_row_for_row(sampler, tmp_path):
    # The checkpoint holds the sampler as tuned so far (step, n_steps and the length): resuming in the
    # middle of thermalization gives the table of an uninterrupted run.
    section = {"name": sampler, "target_acceptance": 0.9, "integrator": {"name": "leapfrog", "step_size": 0.5, "n_steps": 2}}
    spec = {**(BASE if sampler == "hmc" else FLOW), "sampler": section, "n_thermalization": 20, "n_trajectories": 6}
    whole = Simulation.from_spec(spec).run(progress=False)
    calls = []
    with pytest.raises(RunInterrupted):
        Simulation.from_spec(spec).run(
            checkpoint=tmp_path / "c.pt", checkpoint_every=5, progress=False, should_stop=lambda: len(calls.append(1) or calls) == 9
        )
    resumed = Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt", progress=False)
    pd.testing.assert_frame_equal(whole, resumed)
    assert resumed.attrs["sampler"] == whole.attrs["sampler"]
    assert whole.attrs["sampler"]["integrator"]["n_steps"] > 2


def test_the_run_folder_records_the_tuned_step_and_n_steps(tmp_path, monkeypatch, capsys):
    import json

    from lattice_flows.cli import main

    monkeypatch.chdir(tmp_path)
    spec = {**BASE, "n_trajectories": 4, "sampler": {"name": "hmc", "target_acceptance": 0.9, "integrator": {"name": "leapfrog", "step_size": 0.5, "n_steps": 2}}}
    (tmp_path / "tuned.json").write_text(json.dumps(spec))
    assert main(["run", "tuned.json", "--quiet", "--out", "run"]) == 0
    sampler = json.loads((tmp_path / "run" / "status.json").read_text())["sampler"]
    _assert_length_kept(sampler, 1.0)
    assert sampler["integrator"]["n_steps"] > COSTLY_TUNING * 2
    warning = [line for line in capsys.readouterr().err.splitlines() if "times the spec's 2" in line]
    assert len(warning) == 1 and warning[0].startswith("lattice-flows: the step size tuned")  # shown even with --quiet

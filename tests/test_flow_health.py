"""Broken flows must not reach sampling (issue 13, item 5).

A flow is broken when a weight, or its reverse-KL loss or ESS on fresh samples, is not finite. The
flows here are broken without the learning rate (which the spec refuses when absurd): weights set to
NaN or inf directly or in a checkpoint, and a flow whose weights are finite but whose output is not.
Before the health check, FTHMC through a NaN spline flow wrote NaN configurations and "sampling
complete", the NCP flow failed with a traceback, and a training of fewer bad steps than
``max_bad_steps`` was marked complete.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.cli import main
from lattice_flows.training import FlowHealthError, check_flow_health, flow_health

FLOWS = {
    "spline": {"name": "u1_plaquette_coupling", "kernel": "spline", "n_layers": 2, "hidden": [4], "n_bins": 4},
    "ncp": {"name": "u1_plaquette_coupling", "kernel": "ncp", "n_layers": 2, "hidden": [4], "n_mixture": 2},
    "poisson": {"name": "u1_plaquette_poisson", "n_bins": 8, "von_mises_beta": 1.0},
}


def _spec(flow: str, sampler: str = "fthmc", **extra) -> dict:
    sampler_section = {"name": sampler}
    if sampler == "fthmc":
        sampler_section["integrator"] = {"name": "leapfrog", "step_size": 0.2, "n_steps": 3}
    return {
        "lattice": {"shape": [4, 4]},
        "action": {"name": "u1_wilson", "beta": 1.0},
        "flow": FLOWS[flow],
        "sampler": sampler_section,
        "observables": ["plaquette"],
        "n_chains": 2,
        "n_thermalization": 2,
        "n_trajectories": 4,
        **extra,
    }


def _break(sim: Simulation, value: float = math.nan) -> str:
    """Set one entry of the flow's first weight tensor to ``value``; returns the tensor's name."""
    name, p = next(iter(sim.flow.named_parameters()))
    with torch.no_grad():
        p.view(-1)[0] = value
    return name


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_fresh_flow_is_healthy(flow):
    sim = Simulation.from_spec(_spec(flow))
    report = sim.check_flow()
    assert report["healthy"] and math.isfinite(report["loss"]) and 0 < report["ess"] <= 1
    assert report["non_finite"] == [] and report["error"] is None


def test_the_check_draws_from_no_other_stream():
    """Same spec, same table, with or without a health check in between (its generator is its own)."""
    sim = Simulation.from_spec(_spec("spline"))
    first = sim.run()
    sim.check_flow()
    sim.check_flow()
    pd.testing.assert_frame_equal(sim.run(), first)


@pytest.mark.parametrize("sampler", ["fthmc", "flow_imh"])
@pytest.mark.parametrize("flow", sorted(FLOWS))
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sampling_through_a_broken_flow_is_refused_before_the_first_update(flow, sampler, value, tmp_path):
    sim = Simulation.from_spec(_spec(flow, sampler))
    name = _break(sim, value)
    chains = tmp_path / "chains.pt"
    with pytest.raises(FlowHealthError, match="broken and cannot be sampled through") as info:
        sim.run(checkpoint=chains)
    message = str(info.value)
    assert name in message and "fresh samples on 4x4" in message
    assert info.value.health["non_finite"] == [name]
    assert not chains.exists()  # nothing was written, not one configuration


def test_finite_weights_with_a_non_finite_output_are_refused():
    """The poisson flow's knot slopes are ``exp(log_slopes)``: ``log_slopes = 1e300`` is a finite weight
    that makes the map's derivative infinite."""
    sim = Simulation.from_spec(_spec("poisson"))
    with torch.no_grad():
        sim.flow.spline.log_slopes.fill_(1e300)
    report = flow_health(sim.flow, sim.action, sim.lattice_shape, dtype=sim.dtype, device=sim.device)
    assert report["non_finite"] == [] and not report["healthy"]
    with pytest.raises(FlowHealthError, match="loss is (nan|inf|-inf)"):
        sim.run()


def test_a_broken_flow_from_a_checkpoint_is_refused(tmp_path):
    sim = Simulation.from_spec(_spec("ncp"))
    _break(sim, math.inf)
    sim.save(tmp_path / "flow.pt")
    loaded = Simulation.load(tmp_path / "flow.pt", lattice={"shape": [8, 8]})
    with pytest.raises(FlowHealthError, match="fresh samples on 8x8"):
        loaded.run()


def test_training_that_ends_with_a_broken_flow_is_an_error_with_its_history():
    """3 non-finite steps, fewer than max_bad_steps = 20: the budget is spent, but the flow is broken."""
    sim = Simulation.from_spec(_spec("spline", training={"n_steps": 3, "batch_size": 4}))
    _break(sim)
    with pytest.raises(FlowHealthError, match="after 3 training steps is broken") as info:
        sim.train()
    assert len(info.value.history) == 3 and info.value.history["skipped"].all()
    assert len(sim.history) == 3


def test_a_healthy_training_passes_the_check():
    sim = Simulation.from_spec(_spec("spline", training={"n_steps": 2, "batch_size": 4}))
    history = sim.train()
    assert len(history) == 2 and sim.training_done


def test_check_flow_health_returns_the_report_or_raises():
    sim = Simulation.from_spec(_spec("poisson"))
    kw = dict(dtype=sim.dtype, device=sim.device, n=16)
    assert check_flow_health(sim.flow, sim.action, sim.lattice_shape, **kw)["n"] == 16
    _break(sim)
    with pytest.raises(FlowHealthError, match="1 weight tensor is not finite"):
        check_flow_health(sim.flow, sim.action, sim.lattice_shape, **kw)


# -- the command line ----------------------------------------------------------------------------


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("flow", ["spline", "ncp"])
def test_run_of_a_broken_checkpoint_fails_in_training_and_keeps_the_history(flow, workdir, capsys):
    """``run`` of a checkpoint whose flow has a NaN weight and a budget of 3 steps: exit 2 with one line;
    the 3 skipped steps are in history.csv; training is not complete; no table."""
    sim = Simulation.from_spec(_spec(flow, training={"n_steps": 3, "batch_size": 4}))
    _break(sim)
    sim.save(workdir / "broken.pt")
    assert main(["run", "broken.pt", "--out", "out", "--quiet"]) == 2
    assert "broken and cannot be sampled through" in _last_error_line(capsys)
    history = pd.read_csv(workdir / "out" / "history.csv")
    assert len(history) == 3 and history["skipped"].all()
    status = workdir / "out" / "status.json"
    assert not status.exists() or json.loads(status.read_text()).get("training") != "complete"
    assert not (workdir / "out" / "table.parquet").exists() and not (workdir / "out" / "table.csv").exists()
    assert not (workdir / "out" / "chains.pt").exists()


def test_a_training_stopped_by_max_bad_steps_writes_its_history(workdir, capsys):
    sim = Simulation.from_spec(_spec("spline", training={"n_steps": 50, "batch_size": 4, "max_bad_steps": 3}))
    _break(sim)
    sim.save(workdir / "broken.pt")
    assert main(["train", "broken.pt", "--out", "out", "--quiet"]) == 2
    assert "3 training steps in a row had a non-finite loss" in _last_error_line(capsys)
    history = pd.read_csv(workdir / "out" / "history.csv")
    assert len(history) == 3 and history["skipped"].all()


def test_sample_of_a_broken_checkpoint_is_refused(workdir, capsys):
    sim = Simulation.from_spec(_spec("spline"))
    _break(sim)
    sim.save(workdir / "broken.pt")
    assert main(["sample", "broken.pt", "--out", "out", "--quiet"]) == 2
    assert "broken and cannot be sampled through" in _last_error_line(capsys)
    assert not (workdir / "out" / "table.parquet").exists() and not (workdir / "out" / "chains.pt").exists()



def test_an_optimizer_step_beyond_the_dtype_is_a_training_error_with_its_history():
    """In float32, Adam's step ``lr / (1 - beta_1)`` above 3.4e38 cannot be converted: that was a
    traceback. The learning rate is set past the spec's validation (which may refuse it first)."""
    from lattice_flows.training import TrainingError

    sim = Simulation.from_spec(_spec("spline", training={"n_steps": 3, "batch_size": 4}, dtype="float32"))
    object.__setattr__(sim.training, "lr", 1e300)
    with pytest.raises(TrainingError, match="the optimizer step failed at step 0 .* learning rate 1e\\+300 in float32") as info:
        sim.train()
    assert len(info.value.history) == 1 and len(sim.history) == 1

"""Flow training, flow sampling and checkpoints, on a theory with a known answer.

The toy Gaussian theory (tests/toy_plugins.py) with an affine flow has an exact optimum: scale
``sigma``, shift 0, ``ESS = 1`` and ``loss = -log Z = -(V/2) log(2 pi sigma^2)``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lattice_flows import Simulation, SpecError
from lattice_flows.checkpoint import CheckpointError, load_checkpoint
from lattice_flows.training import TrainingError, TrainingSettings, effective_sample_size

SIGMA = 2.0


def gaussian_spec(**changes):
    spec = {
        "lattice": {"shape": [3, 2]},
        "action": {"name": "gaussian", "sigma": SIGMA},
        "flow": {"name": "affine"},
        "training": {"n_steps": 300, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.3, "n_steps": 5}},
        "observables": [],
        "seed": 4,
    }
    spec.update(changes)
    return spec


def test_effective_sample_size():
    assert float(effective_sample_size(torch.zeros(10))) == pytest.approx(1.0)
    # one weight dominates: ESS -> 1/N
    assert float(effective_sample_size(torch.tensor([0.0, -800.0, -800.0, -800.0]))) == pytest.approx(0.25)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expected = w.sum() ** 2 / (4 * (w**2).sum())
    assert float(effective_sample_size(torch.log(w) + 1000.0)) == pytest.approx(float(expected))  # no overflow


def test_training_reaches_the_known_optimum(toy_plugins):
    sim = Simulation.from_spec(gaussian_spec())
    history = sim.train(progress=False)
    assert list(history.columns) == ["step", "loss", "ess", "lr", "grad_norm", "seconds", "skipped"]
    assert list(history["step"]) == list(range(300))
    assert history["seconds"].is_monotonic_increasing
    assert sim.flow.log_scale.item() == pytest.approx(math.log(SIGMA), abs=0.02)
    V = 6
    assert history["loss"].iloc[-50:].mean() == pytest.approx(-(V / 2) * math.log(2 * math.pi * SIGMA**2), abs=0.05)
    assert history["ess"].iloc[-50:].mean() > 0.98
    assert history["ess"].iloc[0] < 0.5  # it started far from the optimum
    x, log_q = sim.sample_flow(1000)
    assert x.shape == (1000, 3, 2) and log_q.shape == (1000,)
    assert float(x.std()) == pytest.approx(SIGMA, rel=0.05)


def test_force_penalty_moves_the_optimum_where_the_algebra_says(toy_plugins):
    # x = e^a z + b on S = x^2/(2 sigma^2): per configuration KL = V (e^{2a}/(2 sigma^2) - a) + const, and
    # the penalty <|dS_f/dz|^2>/dof = e^{2a}(e^{2a} + b^2)/sigma^4. With u = e^{2a}/sigma^2 and b = 0 the
    # minimum of KL + lam * penalty solves V (u - 1) + 4 lam u^2 = 0.
    lam, V = 1.5, 6
    u = (-V + math.sqrt(V**2 + 16 * lam * V)) / (8 * lam)
    training = {"n_steps": 400, "batch_size": 256, "lr": 0.05, "schedule": "cosine", "force_penalty": lam}
    sim = Simulation.from_spec(gaussian_spec(training=training))
    history = sim.train(progress=False)
    assert sim.flow.log_scale.item() == pytest.approx(0.5 * math.log(u) + math.log(SIGMA), abs=0.03)
    assert sim.flow.log_scale.item() < math.log(SIGMA) - 0.1  # away from the KL optimum
    # the history records the reverse KL alone
    a = sim.flow.log_scale.item()
    kl = V * (math.exp(2 * a) / (2 * SIGMA**2) - a) - (V / 2) * (1 + math.log(2 * math.pi))
    assert history["loss"].iloc[-50:].mean() == pytest.approx(kl, abs=0.1)


def test_cosine_schedule_and_clipping(toy_plugins):
    sim = Simulation.from_spec(gaussian_spec(training={"n_steps": 20, "lr": 0.1, "schedule": "cosine", "grad_clip": 0.5}))
    history = sim.train(progress=False)
    assert history["lr"].iloc[0] == pytest.approx(0.1) and history["lr"].iloc[-1] < 0.01
    assert history["lr"].is_monotonic_decreasing


def test_cosine_schedule_follows_the_budget_that_ends_first():
    steps = TrainingSettings(n_steps=100, lr=1.0, schedule="cosine")
    assert steps.lr_at(0) == 1.0 and steps.lr_at(50, seconds=1e6) == pytest.approx(0.5)
    assert steps.lr_at(100) == pytest.approx(0.0, abs=1e-12)
    timed = TrainingSettings(n_steps=100, lr=1.0, schedule="cosine", max_seconds=10.0)
    assert timed.lr_at(10, seconds=5.0) == pytest.approx(0.5)  # time ran out faster than steps
    assert timed.lr_at(75, seconds=1.0) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert timed.lr_at(3, seconds=20.0) == pytest.approx(0.0, abs=1e-12)
    assert TrainingSettings(lr=0.3, max_seconds=10.0).lr_at(5, seconds=9.0) == 0.3  # constant


def test_non_finite_steps_are_skipped_then_stop_training(toy_plugins, monkeypatch):
    sim = Simulation.from_spec(gaussian_spec(training={"n_steps": 50, "max_bad_steps": 3}))
    calls = {"n": 0}
    real_call = type(sim.action).__call__

    def sometimes_nan(self, x):
        calls["n"] += 1
        s = real_call(self, x)
        return s * float("nan") if calls["n"] in (2, 5, 6, 7, 8, 9) else s

    monkeypatch.setattr(type(sim.action), "__call__", sometimes_nan)
    before = sim.flow.log_scale.item()
    with pytest.raises(TrainingError, match=r"3 training steps in a row had a non-finite loss"):
        sim.train(progress=False)
    assert list(sim.history["skipped"]) == [False, True, False, False, True, True, True]
    assert sim.history["skipped"].sum() == 4
    assert sim.flow.log_scale.item() != before  # finite steps did train


def test_training_needs_a_flow():
    spec = gaussian_spec()
    with pytest.raises(SpecError, match=r"spec\['training'\]: there is no 'flow' section"):
        Simulation.from_spec({**spec, "action": {"name": "u1_wilson", "beta": 1.0}, "flow": None, "lattice": {"shape": [4, 4]}})


def test_training_spec_mistakes(toy_plugins):
    with pytest.raises(SpecError, match=r"spec\['training'\]: unknown parameter 'steps' for training; accepted: n_steps"):
        Simulation.from_spec(gaussian_spec(training={"steps": 3}))
    with pytest.raises(SpecError, match=r"spec\['training'\]\['lr'\]: expected a number > 0.0 and <= 1.0, got -1.0"):
        Simulation.from_spec(gaussian_spec(training={"lr": -1.0}))
    with pytest.raises(SpecError, match=r"spec\['flow'\]: flow 'affine' transforms gaussian fields, but the action is a u1"):
        Simulation.from_spec(gaussian_spec(action={"name": "u1_wilson", "beta": 1.0}, lattice={"shape": [4, 4]}))


def test_checkpoint_round_trip_and_exact_resume(toy_plugins, tmp_path):
    straight = Simulation.from_spec(gaussian_spec(training={"n_steps": 20, "lr": 0.05}))
    full = straight.train(progress=False)

    first = Simulation.from_spec(gaussian_spec(training={"n_steps": 10, "lr": 0.05}))
    first.train(progress=False)
    first.save(tmp_path / "ckpt.pt")
    resumed = Simulation.load(tmp_path / "ckpt.pt", training={"n_steps": 20, "lr": 0.05})
    assert len(resumed.history) == 10
    history = resumed.train(progress=False)
    cols = ["step", "loss", "ess", "lr", "grad_norm", "skipped"]
    pd.testing.assert_frame_equal(history[cols], full[cols], check_exact=True)
    assert torch.equal(resumed.flow.log_scale, straight.flow.log_scale)

    again = Simulation.load(tmp_path / "ckpt.pt")
    assert again.to_spec() == first.to_spec()


def test_checkpoint_is_plain_data_and_written_atomically(toy_plugins, tmp_path, monkeypatch):
    sim = Simulation.from_spec(gaussian_spec(training={"n_steps": 3}))
    sim.train(progress=False)
    path = tmp_path / "ckpt.pt"
    sim.save(path)
    data = load_checkpoint(path)  # a checksummed header, then a payload read with weights_only=True: plain data
    assert data["spec"] == sim.to_spec() and set(data["flow"]) == {"log_scale", "shift"}
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies in the middle of writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        sim.save(path)
    assert path.read_bytes() == good  # the last good checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_bad_checkpoints_are_clear_errors(toy_plugins, tmp_path):
    with pytest.raises(CheckpointError, match=r"no such checkpoint"):
        Simulation.load(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage.pt: not a readable lattice-flows checkpoint"):
        Simulation.load(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"not a lattice-flows checkpoint"):
        Simulation.load(tmp_path / "foreign.pt")
    sim = Simulation.from_spec(gaussian_spec(training={"n_steps": 2}))
    sim.save(tmp_path / "ok.pt")
    truncated = (tmp_path / "ok.pt").read_bytes()[:100]
    (tmp_path / "cut.pt").write_bytes(truncated)
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable"):
        Simulation.load(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"flow does not match the spec's \(init_log_scale: checkpoint 0.0, spec 1.0\)"):
        Simulation.load(tmp_path / "ok.pt", flow={"name": "affine", "init_log_scale": 1.0})
    with pytest.raises(SpecError, match=r"unknown spec key 'latice'"):
        Simulation.load(tmp_path / "ok.pt", latice={"shape": [4, 4]})


def test_weights_move_to_another_lattice_size(toy_plugins, tmp_path):
    sim = Simulation.from_spec(gaussian_spec(training={"n_steps": 100, "lr": 0.05}))
    sim.train(progress=False)
    sim.save(tmp_path / "small.pt")
    big = Simulation.load(tmp_path / "small.pt", lattice={"shape": [6, 4]})
    assert big.lattice_shape == (6, 4)
    assert torch.equal(big.flow.log_scale, sim.flow.log_scale)
    x, _ = big.sample_flow(4)
    assert x.shape == (4, 6, 4)
    np.testing.assert_allclose(big.history["loss"], sim.history["loss"])


def test_time_budget_stops_training(toy_plugins):
    sim = Simulation.from_spec(gaussian_spec(training={"n_steps": 10**6, "max_seconds": 0.3}))
    history = sim.train(progress=False)
    assert 0 < len(history) < 10**6
    assert history["seconds"].iloc[-2] < 0.3 <= history["seconds"].iloc[-1]  # stopped at the first step past it
    assert len(sim.train(progress=False)) == len(history)  # the budget is spent: nothing more
    quality = sim.flow_quality(256)
    assert 0 < quality["ess"] <= 1 and set(quality) == {"ess", "loss"}

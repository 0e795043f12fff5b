"""The flow's ESS as runs report it (issue 13, item 6): one smoothed training figure for the log and
training.png, and the ESS on the lattice being sampled, from fresh samples, before sampling."""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np
import pandas as pd
import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.cli import main

from run_specs import flow_spec

FLOW_SPEC = flow_spec(training={"n_steps": 60, "batch_size": 8, "lr": 0.01}, seed=2)


# imported when used, so that each test fails on its own on a lattice-flows without them
def smoothed_history(*args, **kwargs):
    from lattice_flows.training import smoothed_history

    return smoothed_history(*args, **kwargs)


def ess_text(ess):
    from lattice_flows.flow_report import ess_text

    return ess_text(ess)


TRAINING_LINE = re.compile(r"training: 60 steps, \d+ s; loss (\S+), ESS (\S+) \(mean of the last (\d+) steps\)")
FLOW_LINE = re.compile(
    r"flow on (\d+x\d+): ESS (\S+) on 1024 fresh samples \(trained on (\d+x\d+): ESS (\S+), mean of the last (\d+) steps of training\)"
)


@pytest.fixture
def titles(monkeypatch):
    """{file name: suptitle} of every figure saved (the files are still written)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    seen = {}
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        seen[re.match(r"^\.?(.+?\.png)", pathlib.Path(fname).name).group(1)] = self.get_suptitle()
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


# --------------------------------------------------------------------------------------------------
# smoothed_history


def test_smoothed_history_is_the_mean_of_the_last_steps():
    from lattice_flows.training import smoothing_window

    ess = np.linspace(0.0, 0.99, 100)
    ess[-3] = np.nan  # a skipped step is left out
    history = pd.DataFrame({"step": np.arange(100), "ess": ess})
    end = smoothed_history(history, "ess")
    assert end.n_steps == smoothing_window(100) == 10
    assert math.isclose(end.value, np.nanmean(ess[-10:]), rel_tol=1e-12)
    assert end.label == "mean of the last 10 steps"
    assert smoothed_history(history, "ess", window=1).value == ess[-1]
    assert smoothed_history(history.iloc[:4], "ess").n_steps == 4  # shorter than 10: all of it
    assert math.isnan(smoothed_history(history.iloc[:0], "ess").value)
    with pytest.raises(KeyError, match="no column 'loss'"):
        smoothed_history(history, "loss")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            smoothed_history(history, "ess", window=bad)


# --------------------------------------------------------------------------------------------------
# the command line


def _numbers(pattern, err):
    found = [m for line in err.splitlines() for m in [pattern.search(line)] if m]
    assert len(found) == 1, err
    return found[0].groups()


def test_the_training_log_and_figure_quote_the_same_smoothed_ess(tmp_path, capsys, titles):
    spec = tmp_path / "flow.json"
    spec.write_text(json.dumps(FLOW_SPEC))
    assert main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    loss, ess, n_steps = _numbers(TRAINING_LINE, err)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    end = smoothed_history(history, "ess")
    assert int(n_steps) == end.n_steps == 10
    assert ess == ess_text(end.value)
    assert math.isclose(float(loss), smoothed_history(history, "loss").value, rel_tol=1e-4)
    # the last step alone is another number: the smoothing is what is quoted
    assert ess_text(history["ess"].iloc[-1]) != ess
    assert f"ESS {ess} (mean of the last 10 steps)" in titles["training.png"], titles["training.png"]
    # run also measures the flow on the lattice it samples (here the training lattice) before sampling
    lattice, flow_ess, trained_on, training_ess, window = _numbers(FLOW_LINE, err)
    assert (lattice, trained_on, training_ess, window) == ("4x4", "4x4", ess, "10")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert ess_text(status["flow_ess"]) == flow_ess and status["flow_ess_samples"] == 1024
    assert "this run samples" not in titles["training.png"]


def test_sampling_a_flow_on_another_lattice_reports_its_ess_there(tmp_path, capsys, titles):
    spec = tmp_path / "flow.json"
    spec.write_text(json.dumps(FLOW_SPEC))
    assert main(["train", str(spec), "--quiet", "--out", str(tmp_path / "train")]) == 0
    flow = tmp_path / "train" / "flow.pt"
    big = tmp_path / "big"
    assert main(["sample", str(flow), "--out", str(big), "--set", "lattice.shape=[8,8]"]) == 0
    lattice, ess, trained_on, training_ess, window = _numbers(FLOW_LINE, capsys.readouterr().err)
    assert (lattice, trained_on) == ("8x8", "4x4")
    end = smoothed_history(pd.read_csv(tmp_path / "train" / "history.csv"), "ess")
    assert training_ess == ess_text(end.value) and int(window) == end.n_steps
    # the ESS on fresh 8x8 samples, measured independently
    expected = Simulation.load(flow, lattice={"shape": [8, 8]}).flow_quality(1024)["ess"]
    status = json.loads((big / "status.json").read_text())
    assert status["flow_ess"] == pytest.approx(expected, rel=1e-12)
    assert ess == ess_text(expected)
    assert status["flow_lattice"] == [8, 8] and status["flow_trained_on"] == [4, 4]
    # training.png of the 8x8 run shows the 4x4 training, and says so; so does a later report
    note = f"trained on 4x4 (this run samples 8x8): ESS on 8x8 {ess} from 1024 fresh samples"
    assert note in titles["training.png"], titles["training.png"]
    titles.clear()
    assert main(["report", str(big)]) == 0
    assert note in titles["training.png"], titles["training.png"]


def test_the_training_lattice_survives_save_and_load(tmp_path):
    sim = Simulation.from_spec({**FLOW_SPEC, "training": {**FLOW_SPEC["training"], "n_steps": 3}})
    sim.train(progress=False)
    sim.save(tmp_path / "a.pt")
    moved = Simulation.load(tmp_path / "a.pt", lattice={"shape": [8, 12]})
    assert moved.lattice_shape == (8, 12) and moved.history.attrs["lattice_shape"] == [4, 4]
    moved.save(tmp_path / "b.pt")  # a checkpoint of the 8x12 run: its history is still the 4x4 training
    assert Simulation.load(tmp_path / "b.pt").history.attrs["lattice_shape"] == [4, 4]


def test_measuring_the_flow_leaves_the_run_unchanged():
    sim = Simulation.from_spec({**FLOW_SPEC, "n_trajectories": 4})
    before = sim.run()
    quality = sim.flow_quality(100, batch_size=30)  # batches of 30, 30, 30, 10
    assert 0 < quality["ess"] <= 1 and math.isfinite(quality["loss"])
    pd.testing.assert_frame_equal(sim.run(), before)
    # the batches change nothing: one batch of 100 from the same generator gives the same numbers
    one = sim.flow_quality(100, torch.Generator().manual_seed(3), batch_size=100)
    assert sim.flow_quality(100, torch.Generator().manual_seed(3), batch_size=100) == one
    for bad in ({"n": 0}, {"batch_size": 0}, {"n": 2.5}):
        with pytest.raises(ValueError, match="positive integer"):
            sim.flow_quality(**bad)

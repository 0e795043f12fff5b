"""Smoke tests of the benchmark scripts: they run end to end on a tiny case (their figures are not tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

from lattice_flows import Simulation

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_samplers_runs_on_a_tiny_flow(tmp_path, monkeypatch, capsys):
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": [4, 4]},
            "action": {"name": "u1_wilson", "beta": 1.0},
            "flow": {"name": "u1_plaquette_coupling", "kernel": "ncp", "n_layers": 2, "hidden": [2], "n_mixture": 2},
            "training": {"n_steps": 5, "batch_size": 8},
            "sampler": {"name": "flow_imh"},
        }
    )
    sim.train(progress=False)
    sim.save(tmp_path / "flow.pt")
    out = tmp_path / "out"
    argv = ["compare_samplers.py", str(tmp_path / "flow.pt"), "--shapes", "4", "--chains", "2",
            "--thermalization", "3", "--trajectories", "6", "--hmc-trajectories", "6", "--hmc-thermalization", "3",
            "--dtype", "float64", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    _script("compare_samplers").main()
    text = capsys.readouterr().out
    assert "beta = 1.0, 4x4" in text and "cost per independent Q" in text
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["sampler"]) == ["hmc", "fthmc", "flow_imh"]
    assert table["Q^2 exact"].notna().all() and (table["s/traj"] > 0).all()
    assert (out / "spec_fthmc_4x4.json").exists()

"""Training U(1) gauge flows toward the two-flavour Schwinger model (``schwinger_det``, ``schwinger``):
the reverse-KL loss with the exact dense log det is finite and differentiable, a few steps lower it,
and the trained weights go onto a larger lattice. Small: 4x4, a few steps (``benchmarks/schwinger_training.py``
measures what the training gains)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.training import sample_flow

from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parent.parent

SMALL_COUPLING = {"name": "u1_plaquette_coupling", "kernel": "spline", "n_layers": 4, "hidden": [4], "n_bins": 4}


def spec(action: str = "schwinger_det", flow: dict | None = None, n_steps: int = 12, shape=(4, 4)) -> dict:
    return {
        "lattice": {"shape": list(shape)},
        "action": {"name": action, "beta": 2.0, "mass": 0.2},
        "flow": flow or SMALL_COUPLING,
        "training": {"n_steps": n_steps, "batch_size": 16, "lr": 5e-3},
        "sampler": {"name": "flow_imh"},
        "n_chains": 2, "n_thermalization": 0, "n_trajectories": 3,
        "seed": 3,
        "dtype": "float64",
    }


def test_the_loss_toward_the_full_target_has_finite_gradients():
    sim = Simulation.from_spec(spec())
    x, log_q = sample_flow(sim.flow, sim.action, (4, 4), 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64, device="cpu")
    s = sim.action(x)
    # the full target: the gauge action minus log det(D^dag D), which is far from zero
    gauge = sim.action.gauge(x)
    assert torch.isfinite(s).all() and (gauge - s).abs().min() > 1.0
    (log_q + s).mean().backward()
    grads = [p.grad for p in sim.flow.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("action", ["schwinger_det", "schwinger"])
def test_a_few_steps_toward_the_full_target_lower_the_loss(action):
    sim = Simulation.from_spec(spec(action, n_steps=30))
    history = sim.train(progress=False)
    assert len(history) == 30 and not history["skipped"].any()
    assert history[["loss", "ess", "grad_norm"]].map(math.isfinite).all().all()
    # 30 steps of lr 5e-3 on 4x4: the mean loss of the last five is below that of the first five
    assert history["loss"].iloc[-5:].mean() < history["loss"].iloc[:5].mean()
    assert sim.training_done


def test_the_trained_flow_loads_on_a_larger_lattice(tmp_path):
    sim = Simulation.from_spec(spec(n_steps=3))
    sim.train(progress=False)
    sim.save(tmp_path / "flow.pt")
    big = Simulation.load(tmp_path / "flow.pt", lattice={"shape": [8, 8]})
    assert big.lattice_shape == (8, 8) or list(big.lattice_shape) == [8, 8]
    for (name, a), (_, b) in zip(sim.flow.state_dict().items(), big.flow.state_dict().items()):
        assert torch.equal(a, b), name
    quality = big.flow_quality(16, torch.Generator().manual_seed(1), batch_size=16)
    assert math.isfinite(quality["ess"]) and 0 < quality["ess"] <= 1 and math.isfinite(quality["loss"])
    # and it samples the full target there (flow independence Metropolis on schwinger_det)
    table = big.run(progress=False)
    assert len(table) == 6 and table["delta_H"].map(math.isfinite).all()


def test_the_poisson_flow_trains_toward_the_full_target_on_a_non_square_lattice():
    flow = {"name": "u1_plaquette_poisson", "n_bins": 8, "von_mises_beta": 2.0}
    sim = Simulation.from_spec(spec(flow=flow, n_steps=5, shape=(4, 6)))
    history = sim.train(progress=False)
    assert not history["skipped"].any() and history["loss"].map(math.isfinite).all()


@pytest.mark.parametrize("name", ["schwinger_b2_8x8_spline", "schwinger_b2_8x8_poisson"])
def test_the_spec_files_build(name):
    from lattice_flows.specfile import load_spec

    sim = Simulation.from_spec(load_spec(ROOT / "benchmarks" / "specs" / f"{name}.toml"))
    assert sim.action.mass == 0.2 and sim.flow is not None and sim.training is not None


def test_the_benchmark_runs_on_a_tiny_case(tmp_path, monkeypatch, capsys):
    argv = ["schwinger_training.py", "--flow", "poisson", "--train-shape", "4", "--big-shape", "4", "--train-seconds", "0.3",
            "--batch-size", "4", "--n-eval", "8", "--n-eval-big", "8", "--imh", "2", "2", "--imh-big", "2", "2",
            "--fthmc-chains", "2", "--fthmc-thermalization", "0", "--fthmc-trajectories", "1", "--fthmc-n-steps", "2",
            "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("schwinger_training").main()
    out = capsys.readouterr().out
    assert "exact pure gauge (reweighted)" in out and "poisson schwinger_det" in out and "fthmc poisson u1_wilson" in out
    assert (tmp_path / "poisson_schwinger_det.pt").exists()

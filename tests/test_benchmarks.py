"""Smoke tests of the benchmark scripts: they run end to end on a tiny case (their figures are not tests)."""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd
import pytest
import torch

from lattice_flows import Simulation

from benchmark_scripts import load_benchmark
from exact_checks import check_jarzynski_u1



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
    load_benchmark("compare_samplers").main()
    text = capsys.readouterr().out
    assert "compare: u1_wilson (beta=1.0) on 4x4" in text and "start (all samplers): exact sampler u1_exact" in text
    assert "CPU cost per independent topological_charge / hmc's" in text
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["sampler"]) == ["hmc", "fthmc", "flow_imh"] and (table["shape"] == "4x4").all()
    assert table["topological_charge^2 exact"].notna().all() and (table["s/traj"] > 0).all()
    assert (out / "4x4" / "1_fthmc_spec.json").exists() and (out / "4x4" / "comparison.csv").exists()


def test_poisson_start_runs_every_command(tmp_path, monkeypatch, capsys):
    common = ["poisson_start.py", "--beta", "2.0", "--n-bins", "8", "--chains", "2", "--thermalization", "1",
              "--trajectories", "2", "--n-steps", "2"]
    for command in (["scan", "--shape", "4", "--latent-betas", "0", "1"], ["residue", "--n-bins", "8"],
                    ["ess", "--shapes", "4", "--batches", "1"], ["save", str(tmp_path / "start.pt")]):
        monkeypatch.setattr(sys, "argv", common + command)
        load_benchmark("poisson_start").main()
    out = capsys.readouterr().out
    assert "latent_beta acceptance" in out and "ESS" in out and "saved the untrained flow" in out
    # an untrained checkpoint (no training history) goes through the comparison
    argv = ["compare_samplers.py", str(tmp_path / "start.pt"), "--shapes", "4", "--samplers", "fthmc", "--chains", "2",
            "--thermalization", "2", "--trajectories", "4", "--dtype", "float64", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("compare_samplers").main()
    assert "trained on [8, 8] at beta = 2.0: 0 steps, 0 s" in capsys.readouterr().out


def test_schwinger_throughput_runs_on_a_tiny_lattice(monkeypatch, capsys):
    argv = ["schwinger_throughput.py", "--sizes", "4", "--batches", "1", "2", "--dtypes", "float64", "float32",
            "--repeats", "1", "--budget", "0.001"]
    monkeypatch.setattr(sys, "argv", argv)
    rows = load_benchmark("schwinger_throughput").main()
    text = capsys.readouterr().out
    assert "solves/s" in text and "median over the 4 entries" in text and "WARNING" not in text
    assert len(rows) == 4 and all(r["D/s"] > 0 and r["direct it"] > 0 and r["eo it"] > 0 for r in rows)
    assert all(r["eo vs direct"] < (1e-6 if r["dtype"] == "float64" else 1e-2) for r in rows)


def test_schwinger_hmc_vs_fthmc_runs_on_a_tiny_lattice(tmp_path, monkeypatch, capsys):
    argv = ["schwinger_hmc_vs_fthmc.py", "--shape", "4", "--chains", "2", "--equilibrate", "1", "--thermalization", "2",
            "--trajectories", "3", "--hmc-trajectories", "4", "--train-seconds", "1", "--reference-n", "32", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    rows = load_benchmark("schwinger_hmc_vs_fthmc").main()
    text = capsys.readouterr().out
    assert "beta = 6.0, mass = 0.1, 4x4" in text and "per independent Q / HMC's" in text
    assert "# exact (reweighting, ESS" in text and "hmc - exact: <cos x_P>" in text and "3 (HMC 4) measured" in text
    assert [r["sampler"] for r in rows] == ["hmc", "fthmc_untrained", "fthmc_trained"]
    assert all(r["cg it/traj"] > 0 and r["s/traj"] > 0 for r in rows)
    assert "identity(K=2)" in text and all(0 <= r["identity"] and isinstance(r["exp(-dH) reliable"], bool) for r in rows)
    assert (tmp_path / "spec_fthmc_trained.json").exists() and (tmp_path / "flow_u1_b6.pt").exists()


def test_schwinger_hmc_vs_fthmc_passes_latent_beta_and_even_odd_to_every_sampler(tmp_path, monkeypatch, capsys):
    argv = ["schwinger_hmc_vs_fthmc.py", "--shape", "4", "--chains", "2", "--equilibrate", "1", "--thermalization", "2",
            "--trajectories", "2", "--samplers", "hmc", "fthmc_untrained", "fthmc_trained", "--train-seconds", "1",
            "--reference-n", "0", "--latent-beta", "3.5", "--even-odd", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("schwinger_hmc_vs_fthmc").main()
    text = capsys.readouterr().out
    assert "even-odd pseudofermions, flow latent_beta 3.5" in text
    for name in ("hmc", "fthmc_untrained", "fthmc_trained"):
        spec = json.loads((tmp_path / f"spec_{name}.json").read_text())
        assert spec["action"]["even_odd"] is True, name
        if name != "hmc":
            assert spec["flow"]["latent_beta"] == 3.5 and spec["flow"]["von_mises_beta"] == 6.0, name


def test_schwinger_even_odd_hmc_runs_both_variants(monkeypatch, capsys):
    argv = ["schwinger_even_odd_hmc.py", "--shape", "4", "--beta", "2", "--chains", "2", "--equilibrate", "1",
            "--trajectories", "2", "--repeats", "1", "--step-size", "0.2", "--n-steps", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    out = load_benchmark("schwinger_even_odd_hmc").main()
    text = capsys.readouterr().out
    assert "plain / even_odd CPU seconds per trajectory" in text
    assert out["ratio"] > 0 and all(out[v]["cg it/traj"] > 0 for v in ("plain", "even_odd"))


def test_schwinger_reweighting_runs_every_sampler(tmp_path, capsys):
    argv = ["--shapes", "4", "--masses", "0.3", "--reference-n", "64", "--chains", "2", "--thermalization", "1",
            "--trajectories", "4", "--csv", str(tmp_path / "rows.csv")]
    rows = load_benchmark("schwinger_reweighting").main(argv)
    text = capsys.readouterr().out
    assert "beta = 2, 4x4, mass = 0.3: reweighting 64 exact pure-gauge samples" in text and "ESS" in text
    for sampler in ("pure gauge", "reweighting", "hmc", "hmc_det", "fthmc", "flow_imh"):
        assert f"  {sampler} " in text
    table = pd.read_csv(tmp_path / "rows.csv")
    assert list(table["sampler"]) == ["reweighting", "hmc", "hmc_det", "fthmc", "flow_imh"] and len(rows) == 5
    assert table["plaquette pull"].iloc[1:].notna().all()


@pytest.mark.parametrize("transport, context_free, layout", [(False, False, "stripes"), (True, False, "stripes"),
                                                              (True, True, "stripes"), (True, True, "checkerboard")])
def test_nonequilibrium_transport_work_obeys_jarzynski_against_the_exact_free_energy(transport, context_free, layout):
    """``<exp(-W)> = Z(beta) / Z(beta_prior)`` for any protocol, with or without the transport layers (one-link or
    checkerboard; their Jacobian in the work): against ``log Z(beta) - log Z(beta_p) = -V int (1 - <cos x_P>(b)) db`` from the
    exact plaquette (Gauss-Legendre, 32 nodes), within 4 standard errors (delta method over 512 protocols)."""
    bench = load_benchmark("nonequilibrium_transport")
    args = argparse.Namespace(shape=4, beta=3.0, prior_beta=2.0, layers=4, n_bins=16, step_size=0.2, n_steps=3, chains=512,
                              reach=1.5 if layout == "stripes" else 0.75, context_free=context_free, layout=layout)
    work = bench.protocol(args, 6, transport, seed=3)["work"]
    check_jarzynski_u1(work, 2.0, 3.0, (4, 4))


@pytest.mark.parametrize("hidden, loss", [(None, "step"), ([], "step"), (None, "path")])
def test_trained_transport_keeps_the_work_exact_against_the_exact_free_energy(hidden, loss):
    """``benchmarks/train_transport.py``: after training (6 Adam steps at 1e-3 on each step's loss or on the whole
    protocol's mean work, so the maps leave their von Mises start; the test asserts that they did), the protocol
    through the trained maps still obeys Jarzynski's equality with the exact free energy (4x4, beta 2 -> 3, 1024
    fresh protocols, 4 standard errors): the trained maps' Jacobian is in the work."""
    bench = load_benchmark("train_transport")
    args = argparse.Namespace(shape=4, beta=3.0, prior_beta=2.0, layers=4, n_bins=8, reach=1.0, iterations=6, lr=1e-3,
                              train_batch=16, report=1000, hidden=hidden, fixed_batch=False, chains=1024, loss=loss)
    maps, _ = (bench.train_path if loss == "path" else bench.train_online)(args, 6, seed=5)
    _, start = bench.build_map(args, 2.0, 2.0 + (3.0 - 2.0) / 6)
    moved = [a for a, b in zip(bench.trainable(maps[1]), start) if not torch.allclose(a, b)]
    assert moved, "training left the first step's map at its start: the test would not test a trained map"
    works = bench.evaluate(args, 6, maps, seed=9)
    check_jarzynski_u1(works["trained"][0], 2.0, 3.0, (4, 4))


def test_the_path_trainers_hmc_is_the_samplers_leapfrog_on_the_wilson_action():
    """``train_transport.differentiable_hmc`` writes the protocol's HMC out of place for autograd: its force is
    ``u1_wilson``'s, and with the same momenta and uniform it lands where ``hamiltonian_trajectory`` with the
    sampler's leapfrog does."""
    from lattice_flows.phase_space import FLAT
    from lattice_flows.registry import ACTIONS, INTEGRATORS
    from lattice_flows_hmc.hmc import hamiltonian_trajectory, metropolis, select

    bench = load_benchmark("train_transport")
    action = ACTIONS.get("u1_wilson")(beta=2.5)
    x = (torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3.1
    assert torch.allclose(bench._wilson_force(2.5, x), action.force(x.clone()), atol=1e-12)
    assert torch.allclose(bench._wilson(2.5, x), action(x), atol=1e-12)
    ours = bench.differentiable_hmc(x, 2.5, torch.Generator().manual_seed(7), step_size=0.2, n_steps=4)
    g = torch.Generator().manual_seed(7)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    x1, _, delta_h = hamiltonian_trajectory(INTEGRATORS.get("leapfrog")(step_size=0.2, n_steps=4), x.clone(), v, action, FLAT)
    theirs = action.normalize(select(metropolis(delta_h, g), x1, x))
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_transport_residual_the_free_plaquette_map_is_exact_and_the_link_layers_are_not(capsys):
    """``benchmarks/transport_residual.py`` (8x8, 400 exact fields): the von Mises spline applied to every plaquette on
    its own carries one step's equilibrium over (var W below 1e-3 of the plain step's), the link layers leave a
    fifth or more of it (what moving links does to the neighbouring plaquettes)."""
    bench = load_benchmark("transport_residual")
    rows = bench.main(["--shape", "8", "--chains", "400", "--step", "0.3", "--fractions", "1"])
    share = {r["map"]: r["of plain"] for r in rows}
    assert share["independent"] < 1e-3 and share["stripes"] > 0.2 and share["checkerboard"] > 0.2
    assert "checkerboard" in capsys.readouterr().out

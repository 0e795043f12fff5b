"""Diagnostic figures (lattice_flows.figures), the exact charge distribution they draw, and rho(t)."""

from __future__ import annotations

import importlib
import logging
import math
import sys

import numpy as np
import pandas as pd
import pytest

from lattice_flows import Simulation
from lattice_flows.analysis import gamma_method, normalized_autocorrelation
from lattice_flows.figures import write_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SPEC = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 1.0},
    "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}},
    "n_chains": 4,
    "n_thermalization": 10,
    "n_trajectories": 50,
}


@pytest.fixture(scope="module")
def run():
    sim = Simulation.from_spec(SPEC)
    table = sim.run()
    return sim, table, sim.summary(table)


def _fake_history(n_steps: int) -> pd.DataFrame:
    """A history shaped like train_flow's, with one skipped (non-finite) step."""
    rng = np.random.default_rng(0)
    step = np.arange(n_steps)
    loss = 3.0 * np.exp(-step / 40) + 0.2 * rng.normal(size=n_steps)
    loss[n_steps // 2] = np.nan
    return pd.DataFrame(
        {
            "step": step,
            "loss": loss,
            "ess": np.clip(0.9 * (1 - np.exp(-step / 40)) + 0.05 * rng.normal(size=n_steps), 1e-3, 1.0),
            "lr": 1e-3,
            "grad_norm": 1.0,
            "seconds": 0.01 * (step + 1),
            "skipped": step == n_steps // 2,
        }
    )


def _assert_pngs(paths, out_dir, expected):
    assert [p.name for p in paths] == expected
    for p in paths:
        assert p.parent == out_dir
        assert p.read_bytes()[:8] == PNG_MAGIC, p


def _figure_warnings(caplog):
    return [r for r in caplog.records if r.name == "lattice_flows.figures" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------------------------------
# write_figures


def test_write_figures_for_a_u1_run(run, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    sim, table, summary = run
    pyplot_before = "matplotlib.pyplot" in sys.modules
    out = tmp_path / "figures"  # not there yet: created
    paths = write_figures(out, table, summary=summary, observables=sim.observables, history=_fake_history(120))
    _assert_pngs(
        paths,
        out,
        [
            "histories.png",
            "histogram_topological_charge.png",
            "autocorrelation_topological_charge.png",
            "training.png",
            "delta_H.png",
        ],
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert not _figure_warnings(caplog), "a figure failed"
    # object-oriented matplotlib only: write_figures does not pull in pyplot
    assert pyplot_before or "matplotlib.pyplot" not in sys.modules


def test_write_figures_without_summary_observables_or_history(run, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    _, table, _ = run
    # a short table, one chain only, as read back from a CSV
    short = table[(table["chain"] == 2) & (table["trajectory"] < 6)].reset_index(drop=True)
    paths = write_figures(tmp_path, short, history=pd.DataFrame(columns=["step", "loss", "ess"]))
    # no exact distributions without observables; no training rows, so no training figure
    _assert_pngs(paths, tmp_path, ["histories.png", "autocorrelation_topological_charge.png", "delta_H.png"])
    assert not _figure_warnings(caplog)


@pytest.mark.parametrize(
    "case, expected",
    [
        # a frozen charge, delta_H identically 0 (an exact sampler) and a small real history
        ("constant", ["histories.png", "autocorrelation_q.png", "training.png", "delta_H.png"]),
        # NaN and infinite values in an observable and in delta_H
        ("non_finite", ["histories.png", "autocorrelation_x.png", "delta_H.png"]),
        # one trajectory per chain: no autocorrelation; a column name unfit for a file name
        ("one_row", ["histories.png", "delta_H.png"]),
        # only bool and bookkeeping columns: no observable to draw
        ("no_observables", ["delta_H.png"]),
    ],
)
def test_write_figures_edge_cases(case, expected, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    n_chains, n = {"constant": (3, 20), "non_finite": (2, 15), "one_row": (3, 1), "no_observables": (2, 10)}[case]
    table = pd.DataFrame({"chain": np.repeat(np.arange(n_chains), n), "trajectory": np.tile(np.arange(n), n_chains)})
    table["accepted"] = rng.random(len(table)) < 0.7
    table["delta_H"] = rng.normal(size=len(table))
    history = None
    if case == "constant":
        table["delta_H"] = 0.0
        table["q"] = np.zeros(len(table), dtype=np.int64)
        history = _fake_history(5)
    elif case == "non_finite":
        table.loc[[0, 3], "delta_H"] = [np.nan, np.inf]
        table["x"] = rng.normal(size=len(table))
        table.loc[[1, 20], "x"] = [np.nan, -np.inf]
    elif case == "one_row":
        table["wilson_loop(R=2,T=2)"] = rng.normal(size=len(table))
    else:
        table["flag"] = rng.random(len(table)) < 0.5
    paths = write_figures(tmp_path, table, history=history)
    _assert_pngs(paths, tmp_path, expected)
    assert not _figure_warnings(caplog), "a figure failed"


def test_write_figures_rejects_a_non_table(tmp_path):
    with pytest.raises(TypeError, match="DataFrame"):
        write_figures(tmp_path, {"chain": [0]})


def test_without_matplotlib_nothing_is_written(run, tmp_path, monkeypatch, caplog):
    _, table, summary = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    # the module itself imports without matplotlib
    monkeypatch.delitem(sys.modules, "lattice_flows.figures")
    figures = importlib.import_module("lattice_flows.figures")
    with caplog.at_level(logging.WARNING, logger="lattice_flows.figures"):
        assert figures.write_figures(tmp_path / "out", table, summary=summary, history=_fake_history(3)) == []
    assert any("matplotlib" in r.getMessage() for r in _figure_warnings(caplog))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# exact_distribution


def test_exact_distribution_of_the_topological_charge(run):
    sim, _, _ = run
    obs = sim.observables["topological_charge"]
    dist = obs.exact_distribution()
    assert dist, "the Wilson action has an exact P(Q)"
    assert all(isinstance(q, int) for q in dist) and all(p > 0 for p in dist.values())
    # entries below 1e-15 are left out, so the sum is 1 to far better than this
    assert math.isclose(sum(dist.values()), 1.0, rel_tol=0, abs_tol=1e-12)
    q2 = sum(q * q * p for q, p in dist.items())
    assert math.isclose(q2, obs.exact()[2], rel_tol=1e-10)
    assert math.isclose(sum(q * p for q, p in dist.items()), 0.0, abs_tol=1e-12)  # P(Q) = P(-Q)
    # observables without an exact distribution give none (the base class default)
    assert sim.observables["plaquette"].exact_distribution() == {}


# --------------------------------------------------------------------------------------------------
# normalized_autocorrelation


def _ar1(a: float, shape, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_i = a x_{i-1} + sqrt(1 - a^2) eps_i, rho(t) = a^t; shape (R, N)."""
    rng = np.random.default_rng(seed)
    eps = rng.normal(size=shape)
    x = np.empty(shape)
    x[:, 0] = eps[:, 0]
    for i in range(1, shape[1]):
        x[:, i] = a * x[:, i - 1] + math.sqrt(1 - a * a) * eps[:, i]
    return x


def test_normalized_autocorrelation_of_ar1():
    a, shape = 0.6, (4, 5000)
    x = _ar1(a, shape, seed=7)
    rho = normalized_autocorrelation(x, t_max=10)
    assert rho.shape == (11,)
    assert rho[0] == 1.0
    # Bartlett: for AR(1), var(rho_hat(1)) ~ (1 - a^2) / N with N = 20000 samples, so sd ~ 0.0057;
    # 0.03 is about 5 sd (and the O(1/N) bias of the estimator is far smaller).
    assert abs(rho[1] - a) < 0.03
    assert abs(rho[2] - a**2) < 0.04
    # the same numbers as the Gamma method's own rho(t), where both are defined
    res = gamma_method(x)
    full = normalized_autocorrelation(x)
    assert full.shape == (shape[1] // 2 + 1,)
    np.testing.assert_allclose(full[: len(res.gamma)], res.gamma, rtol=0, atol=1e-12)
    # a 1-D series is one chain
    np.testing.assert_allclose(normalized_autocorrelation(x[0], 3), normalized_autocorrelation(x[:1], 3))


def test_normalized_autocorrelation_edge_cases():
    assert normalized_autocorrelation([[2, 2, 2], [2, 2, 2]]).shape == (2,)
    assert np.all(np.isnan(normalized_autocorrelation([[2, 2, 2], [2, 2, 2]])))  # constant: undefined
    assert normalized_autocorrelation([[1.0, 2.0]])[0] == 1.0  # shortest allowed chain
    for bad in (-1, 3, 1.5):
        with pytest.raises(ValueError, match="t_max"):
            normalized_autocorrelation([[1.0, 2.0, 4.0]], t_max=bad)
    with pytest.raises(ValueError, match="finite"):
        normalized_autocorrelation([[1.0, np.nan, 4.0]])

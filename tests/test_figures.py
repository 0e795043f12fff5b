"""Diagnostic figures (lattice_flows.figures), the exact charge distribution they draw, and rho(t)."""

from __future__ import annotations

import errno
import importlib
import json
import logging
import math
import os
import pathlib
import re
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


# --------------------------------------------------------------------------------------------------
# readable figures (issue 13, item 6): what each figure draws, read back from the Figure objects


#: A curve of more points than this is a solid band at the figure's width (about 1000 pixels).
READABLE_POINTS = 1000


@pytest.fixture
def drawn(monkeypatch):
    """{file name: Figure} of every figure write_figures saves (the files are still written)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = {}
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        # the name of the figure, also when it is written to a temporary file beside it
        figures[re.match(r"^\.?(.+?\.png)", pathlib.Path(fname).name).group(1)] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def _long_table(n_chains: int, n: int, *, drift: float = 0.0, seed: int = 3) -> pd.DataFrame:
    """AR(1) chains (rho = 0.9) for a plaquette-like column that rises by ``drift`` along the run,
    and an integer charge."""
    x = _ar1(0.9, (n_chains, n), seed=seed)
    t = np.tile(np.arange(n), n_chains)
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "chain": np.repeat(np.arange(n_chains), n),
            "trajectory": t,
            "accepted": rng.random(t.size) < 0.8,
            "delta_H": rng.normal(0.05, 0.3, t.size),
            "plaquette": 0.8 + 0.02 * x.ravel() + drift * (t / n - 1),
            "topological_charge": np.rint(3 * x.ravel()).astype(np.int64),
        }
    )


def _axes_by_ylabel(fig, label):
    return [ax for ax in fig.axes if ax.get_ylabel() == label]


def test_histories_of_a_long_run_are_thinned_and_block_averaged(tmp_path, drawn):
    # 8 chains x 4000 trajectories: today's figure drew 8 curves of 4000 points per panel, a solid band
    drift = 0.05  # 2.5 times the plaquette's spread: a run that did not thermalize
    write_figures(tmp_path, _long_table(8, 4000, drift=drift))
    fig = drawn["histories.png"]
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert max(len(line.get_xdata()) for line in lines) <= READABLE_POINTS
    # per panel, no more than about one readable curve's worth of points in all
    for ax in fig.axes:
        assert sum(len(line.get_xdata()) for line in ax.get_lines()) <= 2 * READABLE_POINTS
    # the mean over all chains per block of trajectories shows the drift: from the first block to the
    # last it rises by drift * (1 - 1/50), while its noise is 0.02 * sqrt(2 tau / (8 * 80)) ~ 0.003
    overall = [line for line in lines if line.get_label().startswith("all 8 chains")]
    assert len(overall) == 2  # plaquette and charge
    y = np.asarray(overall[0].get_ydata(), dtype=float)
    assert 10 <= y.size <= 50
    assert abs((y[-1] - y[0]) - drift * (1 - 1 / 50)) < 5 * 0.02 * math.sqrt(2 * 9.5 / (8 * 80)) * math.sqrt(2)
    assert all("after thermalization" in ax.get_xlabel() for ax in fig.axes[-2:])


def test_histories_of_one_short_chain_show_every_value(tmp_path, drawn):
    table = _long_table(1, 50)
    write_figures(tmp_path, table)
    fig = drawn["histories.png"]
    (ax,) = _axes_by_ylabel(fig, "plaquette")
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), table["plaquette"].to_numpy())
    assert line.get_marker() == "."


@pytest.mark.parametrize("n", [30, 400])
def test_integer_observables_get_integer_ticks(n, tmp_path, drawn):
    # a charge that is 0 or 1: matplotlib's own ticks would be 0.0, 0.2, ..., 1.0
    table = _long_table(3, n)
    table["topological_charge"] = (table["topological_charge"] > 2).astype(np.int64)
    assert set(table["topological_charge"]) == {0, 1}
    write_figures(tmp_path, table)
    (ax,) = _axes_by_ylabel(drawn["histories.png"], "topological_charge")
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert ticks and all(t == round(t) for t in ticks), ticks


def test_axis_labels_say_what_they_show(run, tmp_path, drawn):
    sim, table, summary = run
    write_figures(tmp_path, table, summary=summary, observables=sim.observables, history=_fake_history(120))
    hist = drawn["histogram_topological_charge.png"].axes[0]
    assert hist.get_xlabel() == "topological_charge" and hist.get_ylabel() == "P(topological_charge)"
    assert drawn["delta_H.png"].axes[0].get_ylabel() == "trajectories per bin"
    assert "H(" in drawn["delta_H.png"].axes[0].get_xlabel()
    training = drawn["training.png"].axes
    assert "loss" in training[0].get_ylabel() and "ESS" in training[1].get_ylabel()
    assert training[-1].get_xlabel() == "training step"
    assert drawn["histories.png"].axes[-1].get_xlabel() == "trajectory (after thermalization)"


def test_training_figure_is_not_dominated_by_the_first_transient(tmp_path, drawn):
    rng = np.random.default_rng(2)
    step = np.arange(400)
    history = pd.DataFrame(
        {
            "step": step,
            "loss": 1000.0 * np.exp(-step / 3.0) + 1.0 + 0.1 * rng.normal(size=step.size),
            "ess": np.clip(0.5 + 0.05 * rng.normal(size=step.size), 0.01, 1.0),
            "seconds": 0.1 * (step + 1),
        }
    )
    write_figures(tmp_path, pd.DataFrame(), history=history)
    loss_axis, ess_axis = drawn["training.png"].axes
    low, high = loss_axis.get_ylim()
    # the converged loss, 1 with noise 0.1, fills the axis (autoscaling spans 0 to 1000)
    assert low < 0.8 and 1.2 < high < 2.0, (low, high)
    assert any("transient" in p.get_label() for p in loss_axis.patches)
    assert ess_axis.get_ylim() == (0.0, 1.05)


def test_training_figure_quotes_the_smoothed_ess(tmp_path, drawn):
    from lattice_flows.training import smoothed_history

    history = _fake_history(400)
    write_figures(tmp_path, pd.DataFrame(), history=history)
    title = drawn["training.png"].get_suptitle()
    end = smoothed_history(history, "ess")
    assert f"ESS {end.value:.3f} (mean of the last {end.n_steps} steps)" in title, title


def test_a_training_figure_from_another_lattice_says_so(tmp_path, drawn):
    history = _fake_history(80)
    history.attrs["lattice_shape"] = [8, 8]  # as Simulation.load sets it
    write_figures(tmp_path / "a", pd.DataFrame(), history=history, lattice_shape=(16, 16))
    title = drawn["training.png"].get_suptitle()
    assert "trained on 8x8 (this run samples 16x16)" in title, title
    # given explicitly, with the flow's ESS on the sampled lattice
    write_figures(tmp_path / "b", pd.DataFrame(), history=_fake_history(80), lattice_shape=(16, 16),
                  training_lattice=(8, 8), flow_ess={"ess": 0.0412, "n_samples": 1024})
    title = drawn["training.png"].get_suptitle()
    assert "trained on 8x8 (this run samples 16x16): ESS on 16x16 0.041 from 1024 fresh samples" in title, title
    # the same lattice: no such line
    write_figures(tmp_path / "c", pd.DataFrame(), history=history, lattice_shape=(8, 8))
    title = drawn["training.png"].get_suptitle()
    assert "flow training on 8x8" in title and "this run samples" not in title, title


# --------------------------------------------------------------------------------------------------
# atomic figures: a failed write leaves no part of a file and is an error


def _full_disk(monkeypatch, fail=lambda name: True):
    """Figure.savefig writes a few bytes, then fails as a full disk does, for the figures ``fail`` names."""
    from matplotlib.figure import Figure

    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        name = re.match(r"^\.?(.+?\.png)", pathlib.Path(fname).name).group(1)
        if not fail(name):
            return original(self, fname, *args, **kwargs)
        with open(fname, "wb") as f:
            f.write(PNG_MAGIC)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)


def test_a_full_disk_is_an_error_and_leaves_no_partial_figure(run, tmp_path, monkeypatch, caplog):
    pytest.importorskip("matplotlib")
    sim, table, summary = run
    write_figures(tmp_path, table, summary=summary, observables=sim.observables)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert "histories.png" in before
    _full_disk(monkeypatch, fail=lambda name: name != "delta_H.png")
    with pytest.raises(OSError) as info:
        write_figures(tmp_path, table, summary=summary, observables=sim.observables)
    assert info.value.errno == errno.ENOSPC
    assert "histories.png" in str(info.value) and "No space left" in str(info.value)
    assert "delta_H.png" not in str(info.value)  # the figures after the failure were still tried
    # the old figures are intact, and no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data or name == "delta_H.png"


def test_a_drawing_bug_in_one_figure_does_not_lose_the_others(run, tmp_path, monkeypatch, caplog):
    pytest.importorskip("matplotlib")
    sim, table, summary = run

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the histogram")

    # the module write_figures comes from (another test re-imports lattice_flows.figures)
    monkeypatch.setitem(write_figures.__globals__, "_histogram", broken)
    paths = write_figures(tmp_path, table, summary=summary, observables=sim.observables)
    assert [p.name for p in paths] == ["histories.png", "autocorrelation_topological_charge.png", "delta_H.png"]
    assert any("histogram_topological_charge.png" in r.getMessage() for r in _figure_warnings(caplog))


def test_a_full_disk_while_writing_figures_ends_the_run_with_an_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from lattice_flows.cli import main

    _full_disk(monkeypatch)
    spec = {**SPEC, "n_chains": 2, "n_trajectories": 20}
    (tmp_path / "small.json").write_text(json.dumps(spec))
    code = main(["run", str(tmp_path / "small.json"), "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("lattice-flows: error:") and "No space left on device" in err[-1]
    assert "Traceback" not in "\n".join(err)
    figures = tmp_path / "out" / "figures"
    assert not figures.exists() or not any(figures.iterdir())


@pytest.mark.slow
def test_histories_of_64_chains_of_100000_trajectories_stay_readable(tmp_path, drawn):
    # the largest run the figure is meant for: 6.4 million rows, about 20 s on two busy cores
    write_figures(tmp_path, _long_table(64, 100_000))
    fig = drawn["histories.png"]
    for ax in fig.axes:
        assert sum(len(line.get_xdata()) for line in ax.get_lines()) <= 2 * READABLE_POINTS
    overall = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "all 64 chains"]
    assert len(overall) == 2 and len(overall[0].get_xdata()) == 50

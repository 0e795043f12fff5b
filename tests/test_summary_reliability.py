"""The summary's honesty checks (issue 13, items 1, 6 and 8): errors that account for a slow mode,
the delta_H identity check, thermalization (drift) and window warnings, and the terminal summary.

Statistical tests use fixed seeds; their tolerances are stated in standard errors of the quantity
tested, so they hold for (almost) any seed and fail only when the behaviour changes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from lattice_flows import Simulation, analysis
from lattice_flows.analysis import binned_error, format_value_error, gamma_method, summarize
from lattice_flows.cli import format_summary, main, summary_warnings


IDENTITY = "delta_H_identity(K=2)"


def ar1(phi: float, n_chains: int, n_samples: int, rng, variance: float = 1.0) -> np.ndarray:
    """Stationary AR(1) chains with autocorrelation phi^|t| and the given variance, (R, N_r)."""
    eps = rng.standard_normal((n_chains, n_samples)) * math.sqrt(variance * (1 - phi**2))
    eps[:, 0] = rng.standard_normal(n_chains) * math.sqrt(variance)  # start in equilibrium
    return lfilter([1.0], [1.0, -phi], eps, axis=1)


def exact_error(components, n_chains: int, n_samples: int) -> float:
    """Standard deviation of the mean of R independent stationary chains of N_r samples whose
    autocovariance is sum_k var_k phi_k^|t|: Var = sum_k var_k [1 + 2 sum_t (1 - t/N_r) phi_k^t] / (R N_r)."""
    t = np.arange(1, n_samples)
    var = sum(v * (1 + 2 * np.sum((1 - t / n_samples) * phi**t)) for phi, v in components)
    return math.sqrt(var / (n_samples * n_chains))


def long_table(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A simulation-like table from arrays of shape (R, N_r)."""
    n_chains, n = next(iter(columns.values())).shape
    return pd.DataFrame(
        {"chain": np.repeat(np.arange(n_chains), n), "trajectory": np.tile(np.arange(n), n_chains)}
        | {k: v.reshape(-1) for k, v in columns.items()}
    )


# ----------------------------------------------------------------- item 8: a slow mode


FAST, SLOW = (0.5, 1.0), (0.99, 0.1)   # (phi, variance): tau_int 1.5 and 99.5


def test_a_slow_mode_beyond_the_window_is_caught_by_binning():
    # A fast AR(1) plus a small, slow AR(1): rho(t) = (phi_f^t + 0.1 phi_s^t) / 1.1, so the slow part
    # is 9% of rho(0) but holds (0.1 * 99.5) / (1.5 + 0.1 * 99.5) = 87% of tau_int = 10.4. Wolff's window
    # (S = 1.5) closes at W ~ 50, where the slow tail has only begun (tau_int(W) ~ 5.1). The binned error
    # (32 blocks: 13% uncertain) is then 1.4x the Gamma method's and wins for most seeds (not for 11).
    rng = np.random.default_rng(12)
    n_chains, n = 4, 250_000
    x = ar1(FAST[0], n_chains, n, rng, FAST[1]) + ar1(SLOW[0], n_chains, n, rng, SLOW[1])
    exact = exact_error([FAST, SLOW], n_chains, n)
    tau_exact = (1.5 * FAST[1] + 99.5 * SLOW[1]) / (FAST[1] + SLOW[1])

    old = gamma_method(x)
    # What the window W sees: tau_int(W) = 1/2 + sum_{t<=W} rho(t) in closed form, so the old error is
    # low by the known factor sqrt(tau_int(W) / tau_int) (0.70 here), within 3 of its own errors.
    t = np.arange(1, old.window + 1)
    tau_w = 0.5 + np.sum(FAST[1] * FAST[0] ** t + SLOW[1] * SLOW[0] ** t) / (FAST[1] + SLOW[1])
    factor = math.sqrt(tau_w / tau_exact)
    assert factor < 0.75
    assert abs(old.error / exact - factor) < 3 * factor * old.tau_int_error / (2 * old.tau_int)
    assert old.reliable  # the Gamma method itself sees nothing wrong: that is the defect

    row = summarize(long_table({"plaquette": x})).loc["plaquette"]
    b = binned_error(x)
    assert row["gamma_error"] == pytest.approx(old.error) and row["binned_error"] == pytest.approx(b.error)
    # the summary's error is the binned one, right within 3 of its standard errors (13% each)
    assert row["error"] == pytest.approx(b.error)
    assert abs(row["error"] - exact) < 3 * b.error_error
    assert abs(row["tau_int"] - tau_exact) < 3 * row["tau_int_error"]
    assert "slow tail" in row["note"] and row["reliable"]


def test_the_exponential_tail_with_the_slow_modes_tau_exp_gives_the_right_error():
    # Schaefer-Sommer-Virotta: sum rho(t) while significant, then add tau_exp rho(W_u + 1). With the slow
    # mode's tau_exp = -1 / ln 0.99 = 99.5 the error is right within 3 of its own errors (each ~2% here).
    rng = np.random.default_rng(12)
    n_chains, n = 4, 250_000
    slow = ar1(SLOW[0], n_chains, n, rng, SLOW[1])
    x = ar1(FAST[0], n_chains, n, rng, FAST[1]) + slow
    exact = exact_error([FAST, SLOW], n_chains, n)
    tau_exact = (1.5 * FAST[1] + 99.5 * SLOW[1]) / (FAST[1] + SLOW[1])
    res = gamma_method(x, tau_exp=-1 / math.log(SLOW[0]))
    err_of_err = res.error * res.tau_int_error / (2 * res.tau_int)
    assert res.tail > 0 and res.window > gamma_method(x).window and res.reliable
    assert abs(res.error - exact) < 3 * err_of_err and err_of_err < 0.05 * exact
    assert abs(res.tau_int - tau_exact) < 3 * res.tau_int_error
    # the slow mode named as a column (as one would name the topological charge): its own tau_int is tau_exp,
    # itself estimated (to ~5%), hence 1.5x the tolerance
    table = long_table({"plaquette": x, "slow_mode": slow})
    row = summarize(table, tau_exp="slow_mode").loc["plaquette"]
    assert abs(row["error"] - exact) < 3 * err_of_err * 1.5 and "exponential tail" in row["note"]
    for bad, match in [(0, "tau_exp"), (-3.0, "tau_exp"), (math.inf, "tau_exp"), ("missing", "not an analysed")]:
        with pytest.raises(ValueError, match=match):
            summarize(table, tau_exp=bad)
    with pytest.raises(ValueError, match="n_sigma"):
        gamma_method(x[:, :100], tau_exp=10.0, n_sigma=0)


def test_without_a_slow_mode_the_gamma_method_stands():
    x = ar1(0.9, 16, 2_000, np.random.default_rng(12))
    row = summarize(long_table({"plaquette": x})).loc["plaquette"]
    res = gamma_method(x)
    assert row["error"] == res.error and row["tau_int"] == res.tau_int and row["note"] == ""
    assert abs(row["binned_error"] - row["error"]) < 3 * binned_error(x).error_error


def test_binned_error_blocks_and_edge_cases():
    assert binned_error(np.ones((2, 64))).error == 0.0  # constant
    assert math.isnan(binned_error(np.ones((2, 10))).error)  # 16 blocks per chain of 10 samples: none
    b = binned_error(np.arange(64.0).reshape(2, 32))
    assert (b.n_blocks, b.block_size) == (32, 2) and b.error > 0
    b = binned_error(np.zeros((1, 3)) + [0, 1, 2])  # fewer samples than blocks: no estimate
    assert math.isnan(b.error)
    b = binned_error(np.random.default_rng(0).normal(size=(64, 50)))  # more chains than blocks: chain means
    assert (b.n_blocks, b.block_size) == (64, 50)
    with pytest.raises(ValueError, match="min_blocks"):
        binned_error(np.zeros((2, 10)), min_blocks=1)


# ----------------------------------------------------------------- item 8: the delta_H check


def delta_h_table(mu: float, variance: float, seed: int, n_chains: int = 16, n: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return long_table({"delta_H": rng.normal(mu, math.sqrt(variance), (n_chains, n))})


def _pull(summary, row):
    return (summary.loc[row, "mean"] - 1.0) / summary.loc[row, "error"]


def test_identity_check_is_right_for_a_heavy_tailed_exact_sampler():
    # dH ~ N(mu, 2 mu) obeys p(-u) = e^{-u} p(u) exactly (Crooks), as every exact sampler's dH does. At
    # mu = 10 almost half the updates have dH > ln N = 10.4, whose mirror events are too rare to be seen:
    # the sample mean of e^{-dH} falls far short of 1 with a small quoted error (the old check's failure).
    s = summarize(delta_h_table(10.0, 20.0, seed=3))
    assert _pull(s, "exp(-delta_H)") < -8
    assert not s.loc["exp(-delta_H)", "reliable"] and "heavy tail" in s.loc["exp(-delta_H)", "note"]
    assert IDENTITY in s.loc["exp(-delta_H)", "note"]
    # <e^{-dH} 1[dH >= -2]> + P(dH > 2): bounded by e^2, exactly 1 here
    assert abs(_pull(s, IDENTITY)) < 4 and s.loc[IDENTITY, "reliable"]
    assert s.loc[IDENTITY, "error"] < 0.005  # small enough to test something


def test_identity_check_flags_a_wrong_sampler():
    # dH ~ N(1, 1): the variance is not 2 mu, so p(-u) != e^{-u} p(u), as for an integrator that is not
    # area-preserving; <identity> = 0.75 there (numerical integral), and the check must see it.
    s = summarize(delta_h_table(1.0, 1.0, seed=4))
    assert _pull(s, IDENTITY) < -20 and s.loc[IDENTITY, "mean"] == pytest.approx(0.75, abs=0.02)
    # and one that errs the other way
    s = summarize(delta_h_table(1.0, 4.0, seed=5))
    assert _pull(s, IDENTITY) > 10


def test_identity_check_terms_by_hand_and_non_finite_delta_h():
    dh = np.array([[-3.0, -2.0, 0.5, 2.0, 2.5, np.inf]])
    terms = analysis._identity_terms(dh, 2.0)
    np.testing.assert_allclose(terms, [[0.0, math.e**2, math.exp(-0.5), math.exp(-2.0), math.exp(-2.5) + 1, 1.0]])
    table = long_table({"delta_H": np.array([[0.1, np.nan, 0.3, 0.2], [0.0, 0.1, 0.2, 0.3]])})
    s = summarize(table)
    assert not s.loc[IDENTITY, "reliable"] and "not finite" in s.loc[IDENTITY, "note"]


def test_simulation_summary_gives_the_identity_its_exact_value():
    sim = Simulation.from_spec({
        "lattice": {"shape": [4, 4]}, "action": {"name": "u1_wilson", "beta": 1.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
        "observables": ["plaquette"], "n_chains": 16, "n_trajectories": 2000,
    })
    table = delta_h_table(10.0, 20.0, seed=3)
    table["plaquette"] = np.random.default_rng(6).normal(0.4, 0.1, len(table))
    s = sim.summary(table)
    assert s.loc[IDENTITY, "exact"] == 1.0 and abs(s.loc[IDENTITY, "pull"]) < 4
    assert s.loc["exp(-delta_H)", "pull"] < -8 and not s.loc["exp(-delta_H)", "reliable"]


# ----------------------------------------------------------------- item 1: thermalization, windows


def relaxing(n_chains: int, n: int, seed: int) -> np.ndarray:
    """A chain still relaxing: 0.7 + 0.1 e^{-t/300} plus AR(1) noise of standard deviation 0.01."""
    t = np.arange(n)
    return 0.7 + 0.1 * np.exp(-t / 300) + 0.01 * ar1(0.8, n_chains, n, np.random.default_rng(seed))


def test_a_drifting_series_is_flagged_not_thermalized():
    s = summarize(long_table({"plaquette": relaxing(8, 1000, seed=7)}))
    row = s.loc["plaquette"]
    assert not row["reliable"] and "not thermalized" in row["note"] and row["drift"] < -4
    warnings = summary_warnings(s)
    assert len(warnings) == 1 and warnings[0].startswith("plaquette: ") and "not thermalized" in warnings[0]


def test_stationary_series_give_no_warning():
    # 300 stationary summaries of 16 chains x 1000: the drift is standard normal (std within 10% of 1), and
    # none passes 4 (probability 6e-5 each, 2% for all 300)
    drifts = [analysis._drift(ar1(0.9, 16, 1000, np.random.default_rng(s)), 1.5, 32) for s in range(300)]
    assert abs(np.std(drifts) - 1) < 0.1 and max(map(abs, drifts)) < 4
    rng = np.random.default_rng(8)
    s = summarize(long_table({"plaquette": ar1(0.9, 16, 1000, rng), "accepted": rng.random((16, 1000)) < 0.8}))
    assert s["reliable"].all() and summary_warnings(s) == [] and (s["note"] == "").all()


def test_a_window_that_did_not_close_is_a_warning():
    x = np.cumsum(np.random.default_rng(0).standard_normal((4, 200)), axis=1)  # a random walk
    s = summarize(long_table({"topological_charge": x}))
    assert any("did not close" in w for w in summary_warnings(s))


def test_cli_prints_warning_lines_for_a_run_that_did_not_thermalize(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "cold.toml"
    spec.write_text(
        'n_chains = 4\nn_thermalization = 0\nn_trajectories = 40\nseed = 1\nstart = "cold"\n'
        'observables = ["plaquette"]\n[lattice]\nshape = [4, 4]\n[action]\nname = "u1_wilson"\nbeta = 1.0\n'
        '[sampler]\nname = "hmc"\nintegrator = { name = "leapfrog", step_size = 0.05, n_steps = 3 }\n'
    )
    assert main(["run", str(spec), "--quiet", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("lattice-flows: warning: plaquette: ")]
    assert lines and any(word in lines[0] for word in ("not thermalized", "did not close", "too short"))
    assert "plaquette" in out and "no [" in out  # the table marks the row and points at its footnote
    assert main(["report", "runs/cold"]) == 0  # the same warnings again from the folder
    assert lines[0] in capsys.readouterr().err.splitlines()


# ----------------------------------------------------------------- item 6: the terminal summary


@pytest.mark.parametrize(
    "value, error, text",
    [
        (0.912364, 0.000123, "0.91236(12)"),
        (0.912364, 0.0000996, "0.91236(10)"),     # the error rounds up to one more digit
        (1234.5, 56.0, "1234(56)"),
        (123456.0, 1234.0, "123500(1200)"),        # error >= 10: the value rounded to its place
        (0.003, 0.12, "0.00(12)"),                 # error larger than the value
        (-0.0123, 0.0045, "-0.0123(45)"),
        (2.5e-8, 3e-10, "2.500(30)e-08"),          # very small: a common power of ten
        (6.02e23, 1.2e21, "6.020(12)e+23"),        # very large
        (1.0, 0.0, "1(0)"),                        # error 0: exact (or a frozen series)
        (0.7395, math.nan, "0.7395(?)"),
        (0.7395, math.inf, "0.7395(?)"),
        (math.nan, 0.1, "nan"),
        (math.inf, 0.1, "inf"),
        (-0.0, 1e-2, "0.000(10)"),
    ],
)
def test_format_value_error(value, error, text):
    assert format_value_error(value, error) == text


def test_format_value_error_digits():
    assert format_value_error(4.23, 0.31, digits=1) == "4.2(3)"
    with pytest.raises(ValueError, match="digits"):
        format_value_error(1.0, 0.1, digits=0)


def test_terminal_summary_has_a_reliable_column_and_notes_as_footnotes():
    rng = np.random.default_rng(10)
    table = long_table({"plaquette": relaxing(8, 1000, seed=7), "wilson_loop": ar1(0.5, 8, 1000, rng)})
    s = summarize(table)
    s["exact"], s["pull"] = 0.7, (s["mean"] - 0.7) / s["error"]
    text = format_summary(s)
    lines = text.splitlines()
    assert lines[0].split() == ["observable", "value", "exact", "pull", "tau_int", "reliable"]
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert rows["plaquette"].rstrip().endswith("no [1]") and rows["wilson_loop"].rstrip().endswith("yes")
    assert lines[3].startswith("[1] plaquette: ") and "not thermalized" in " ".join(lines[3:])
    assert max(map(len, lines)) <= 100  # a note no longer stretches every row
    w = s.loc["wilson_loop"]
    assert format_value_error(w["mean"], w["error"]) in rows["wilson_loop"]


def test_terminal_and_csv_share_the_first_column_name(tmp_path):
    from lattice_flows.rundir import RunFolder

    s = summarize(long_table({"plaquette": ar1(0.5, 4, 200, np.random.default_rng(1))}))
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(parents=True)
    folder.write_summary(s, format_summary(s))
    assert pd.read_csv(folder.summary_csv).columns[0] == "observable" == format_summary(s).split()[0]
    assert s.index.name == "observable"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"drift_threshold": 0}, "drift_threshold .* got 0"),
        ({"drift_threshold": "x"}, "drift_threshold .* got 'x'"),
        ({"drift_threshold": math.inf}, "drift_threshold"),
        ({"min_blocks": 1}, "min_blocks must be an integer >= 2, got 1"),
        ({"tau_exp": math.nan}, "tau_exp must be a positive finite number, got nan"),
        ({"tau_exp": "frozen"}, "tau_exp 'frozen': its tau_int is undefined"),
    ],
)
def test_summarize_checks_its_new_arguments(kwargs, match):
    rng = np.random.default_rng(2)
    table = long_table({"plaquette": ar1(0.5, 2, 100, rng), "frozen": np.ones((2, 100))})
    with pytest.raises(ValueError, match=match):
        summarize(table, **kwargs)


def test_an_exact_sampler_without_accept_reject_gives_no_warning():
    # u1_exact writes accepted = True and delta_H = 0 for every update: constant by construction
    rng = np.random.default_rng(3)
    table = long_table({"accepted": np.ones((4, 200), dtype=bool), "delta_H": np.zeros((4, 200)),
                        "plaquette": ar1(0.0, 4, 200, rng)})
    s = summarize(table)
    assert summary_warnings(s) == [] and s["reliable"].all()
    assert "no accept/reject step" in s.loc["exp(-delta_H)", "note"]
    # but HMC that never accepts is stuck, and says so
    table["accepted"] = False
    table["delta_H"] = 50.0
    assert {w.split(":")[0] for w in summary_warnings(summarize(table))} >= {"accepted", "delta_H"}

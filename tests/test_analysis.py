"""Tests of lattice_flows.analysis (Wolff's Gamma method and the table summary).

Statistical tests use fixed seeds and state their tolerance in standard errors,
so they are deterministic; the tolerances are what an honest estimator should
meet for any seed, not values tuned to these ones.
"""

from __future__ import annotations

import doctest
import math
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattice_flows import analysis
from lattice_flows.analysis import SUMMARY_COLUMNS, GammaResult, gamma_method, summarize


# ---------------------------------------------------------------- exact references


def ar1(rho: float, n_chains: int, n_samples: int, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t, shape (R, N_r).

    Unit variance, autocorrelation rho^|t|.
    """
    rng = np.random.default_rng(seed)
    x = np.empty((n_chains, n_samples))
    x[:, 0] = rng.standard_normal(n_chains)  # start in equilibrium: no burn-in
    eps = math.sqrt(1.0 - rho**2) * rng.standard_normal((n_chains, n_samples))
    for i in range(1, n_samples):
        x[:, i] = rho * x[:, i - 1] + eps[:, i]
    return x


def ar1_tau_int(rho: float) -> float:
    """1/2 + sum_{t>=1} rho^t."""
    return (1.0 + rho) / (2.0 * (1.0 - rho))


def ar1_error(rho: float, n_chains: int, n_samples: int) -> float:
    """Exact standard deviation of the mean of R independent stationary chains of length N_r.

    Var(mean of one chain) = (1/N_r) [1 + 2 sum_{t=1}^{N_r-1} (1 - t/N_r) rho^t].
    """
    t = np.arange(1, n_samples)
    var_chain = (1.0 + 2.0 * np.sum((1.0 - t / n_samples) * rho**t)) / n_samples
    return math.sqrt(var_chain / n_chains)


def naive_gamma_method(data: np.ndarray, S: float = 1.5):
    """Loop-by-loop transcription of Wolff's UWerr for a primary observable.

    Independent of the FFT code path; O(N W), so for small data only.
    Returns (mean, error, tau_int, tau_int_error, W).
    """
    data = np.atleast_2d(np.asarray(data, dtype=float))
    n_chains, n_r = data.shape
    n = data.size
    abar = data.mean()
    w_max = n_r // 2
    gamma = np.zeros(w_max + 1)
    for t in range(w_max + 1):
        s = 0.0
        for r in range(n_chains):
            for i in range(n_r - t):
                s += (data[r, i] - abar) * (data[r, i + t] - abar)
        gamma[t] = s / (n_chains * (n_r - t))
    g_int, w_opt = 0.0, w_max
    for w in range(1, w_max + 1):
        g_int += gamma[w] / gamma[0]
        tau_w = S / math.log((g_int + 1.0) / g_int) if g_int > 0 else np.finfo(float).eps
        if math.exp(-w / tau_w) - tau_w / math.sqrt(w * n) < 0:
            w_opt = w
            break
    c_f = gamma[0] + 2.0 * gamma[1 : w_opt + 1].sum()
    gamma = gamma + c_f / n
    c_f = gamma[0] + 2.0 * gamma[1 : w_opt + 1].sum()
    tau = c_f / (2.0 * gamma[0])
    return abar, math.sqrt(c_f / n), tau, 2.0 * tau * math.sqrt((w_opt + 0.5 - tau) / n), w_opt


# ---------------------------------------------------------------- gamma_method


@pytest.mark.parametrize("rho, seed", [(0.0, 1), (0.5, 2), (0.8, 3), (0.95, 4)])
def test_ar1_tau_int_and_error_match_exact_values(rho, seed):
    n_chains, n_samples = 16, 10_000
    res = gamma_method(ar1(rho, n_chains, n_samples, seed))
    exact_tau = ar1_tau_int(rho)
    exact_err = ar1_error(rho, n_chains, n_samples)
    # sigma ~ sqrt(tau_int), so the relative error of the error is half that of tau_int.
    err_of_err = res.error * res.tau_int_error / (2.0 * res.tau_int)

    assert res.reliable and res.note == ""
    assert abs(res.tau_int - exact_tau) < 3.0 * res.tau_int_error
    assert abs(res.error - exact_err) < 3.0 * err_of_err
    assert abs(res.mean - 0.0) < 4.0 * res.error  # the process has mean 0
    assert res.n_samples == n_chains * n_samples and res.n_chains == n_chains


def test_ar1_estimated_rho_follows_exact_autocorrelation():
    rho = 0.8
    res = gamma_method(ar1(rho, 16, 10_000, seed=5))
    t = np.arange(len(res.gamma))
    assert res.gamma[0] == 1.0
    assert len(res.gamma) > res.window  # t = 0..W at least, for plots
    # Var rho(t) ~ (2 tau_int / N) sum (...) <~ 4 tau_int / N for these t.
    tol = 5.0 * math.sqrt(4.0 * ar1_tau_int(rho) / res.n_samples)
    np.testing.assert_allclose(res.gamma[:20], rho ** t[:20], atol=tol)


def test_independent_samples_give_tau_half_and_naive_error():
    x = np.random.default_rng(6).standard_normal((8, 5_000))
    res = gamma_method(x)
    assert abs(res.tau_int - 0.5) < 3.0 * res.tau_int_error
    naive = x.std(ddof=1) / math.sqrt(x.size)
    assert res.error == pytest.approx(naive, rel=0.05)
    assert res.window <= 5


@pytest.mark.parametrize("shape, seed", [((1, 60), 7), ((3, 40), 8), ((5, 23), 9)])
@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_matches_loop_transcription_of_wolff(shape, seed, rho):
    # Pins the FFT, the per-chain pairing and normalisation, the window and the
    # bias correction against a direct reading of the paper.
    x = ar1(rho, *shape, seed=seed) + 3.0
    res = gamma_method(x)
    mean, error, tau, dtau, w = naive_gamma_method(x)
    assert res.window == w
    np.testing.assert_allclose(
        [res.mean, res.error, res.tau_int, res.tau_int_error], [mean, error, tau, dtau], rtol=1e-10
    )


def test_pairs_never_cross_chain_boundaries():
    # Two chains whose concatenation would correlate the end of one with the start
    # of the other: chain-wise Gamma(t) must equal the hand count.
    x = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    d = x - x.mean()
    gamma1 = (d[0, :-1] @ d[0, 1:] + d[1, :-1] @ d[1, 1:]) / (2 * 3)
    gamma0 = (d**2).mean()
    np.testing.assert_allclose(analysis._autocovariance(d, 2)[:2], [gamma0, gamma1])


def test_multi_chain_agrees_with_pooled_single_chain():
    x = ar1(0.6, 16, 4_000, seed=10)
    multi = gamma_method(x)
    pooled = gamma_method(x.reshape(-1))  # 15 spurious boundary pairs out of 64000
    assert multi.mean == pytest.approx(pooled.mean, rel=1e-12, abs=1e-15)
    assert multi.n_samples == pooled.n_samples
    assert abs(multi.tau_int - pooled.tau_int) < 0.5 * multi.tau_int_error
    assert multi.error == pytest.approx(pooled.error, rel=0.02)


def test_one_row_2d_equals_1d():
    x = ar1(0.5, 1, 500, seed=11)
    a, b = gamma_method(x), gamma_method(x[0])
    assert a == b  # dataclass equality, gamma excluded
    np.testing.assert_array_equal(a.gamma, b.gamma)


@pytest.mark.parametrize(
    "data, value",
    [
        (np.full(100, 3.0), 3.0),
        (np.full((4, 50), 0.1), 0.1),  # 0.1 is not exact in binary: mean must still be
        (np.ones((2, 10), dtype=bool), 1.0),
        (np.full((3, 20), -2, dtype=np.int64), -2.0),  # a frozen topological charge
    ],
)
def test_constant_series_is_flagged_not_raised(data, value):
    res = gamma_method(data)
    assert res.mean == value
    assert res.error == 0.0
    assert math.isnan(res.tau_int) and math.isnan(res.tau_int_error)
    assert res.window == 0 and res.gamma.shape == (0,)
    assert not res.reliable and "constant" in res.note


def test_window_that_never_closes_returns_estimate_with_flag():
    # A random walk: Gamma(t) stays positive out to N_r // 2.
    walk = np.cumsum(np.random.default_rng(0).standard_normal((4, 200)), axis=1)
    res = gamma_method(walk)
    assert not res.reliable
    assert "did not close" in res.note and "100" in res.note
    assert res.window == 100
    assert math.isfinite(res.tau_int) and res.tau_int > 10
    assert math.isfinite(res.error) and res.error > 0


def test_anticorrelated_tiny_series_gives_nan_error_with_flag():
    # Gamma(0) + 2 Gamma(1) = 0.25 - 0.5 < 0: no variance to take a root of.
    res = gamma_method([1.0, 2.0])
    assert res.mean == 1.5 and res.window == 1
    assert math.isnan(res.error) and math.isnan(res.tau_int_error)
    assert not res.reliable and "non-positive C_F" in res.note


def test_bool_input_is_zero_one():
    flags = ar1(0.5, 4, 1_000, seed=12) > 0.3
    res_bool = gamma_method(flags)
    res_float = gamma_method(flags.astype(float))
    assert res_bool == res_float
    assert res_bool.mean == pytest.approx(flags.mean())


def test_larger_S_gives_larger_window():
    x = ar1(0.9, 8, 5_000, seed=13)
    assert gamma_method(x, S=3.0).window > gamma_method(x, S=1.0).window


@pytest.mark.parametrize(
    "data, match",
    [
        ([1.0, np.nan, 2.0], "finite"),
        ([[1.0, 2.0], [np.inf, 0.0]], "finite"),
        ([1.0], "too few samples"),
        ([], "too few samples"),
        (np.zeros((3, 1)), "too few samples"),
        (np.zeros((0, 5)), "too few samples"),
        (np.zeros((2, 3, 4)), "shape"),
        (5.0, "shape"),
        (["a", "b", "c"], "dtype"),
        (np.array([1 + 1j, 2.0]), "complex"),
    ],
)
def test_bad_data_raises_value_error(data, match):
    with pytest.raises(ValueError, match=match):
        gamma_method(data)


@pytest.mark.parametrize("S", [0.0, -1.0, math.nan, math.inf, "big"])
def test_bad_S_raises_value_error(S):
    with pytest.raises(ValueError, match="S must be"):
        gamma_method(np.arange(10.0), S=S)


def test_nan_error_message_locates_the_bad_value():
    x = np.zeros((3, 10))
    x[2, 7] = np.nan
    with pytest.raises(ValueError, match=r"\(2, 7\)"):
        gamma_method(x)


def test_result_is_frozen():
    res = gamma_method(np.arange(10.0))
    assert isinstance(res, GammaResult)
    with pytest.raises(AttributeError):
        res.mean = 0.0


def test_large_input_is_fast():
    # 64 chains x 1e5 samples takes ~0.3 s; the bound only guards against an O(N W) path.
    x = np.random.default_rng(14).standard_normal((64, 100_000))
    start = time.perf_counter()
    gamma_method(x)
    assert time.perf_counter() - start < 3.0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_chains=st.integers(1, 4),
    n_samples=st.integers(20, 400),
    rho=st.floats(0.0, 0.9),
    shift=st.floats(-100.0, 100.0),
    scale=st.floats(1e-3, 1e3),
)
def test_shift_and_scale_covariance(seed, n_chains, n_samples, rho, shift, scale):
    x = ar1(rho, n_chains, n_samples, seed)
    base = gamma_method(x)
    # nan_ok: a short anticorrelated draw can have C_F <= 0, where error is nan
    # (flagged); the property is that it stays nan.
    close = lambda value, rel: pytest.approx(value, rel=rel, nan_ok=True)  # noqa: E731

    shifted = gamma_method(x + shift)
    assert shifted.window == base.window and shifted.reliable == base.reliable
    assert shifted.mean == pytest.approx(base.mean + shift, abs=1e-9 * (1 + abs(shift)))
    assert shifted.error == close(base.error, 1e-8)
    assert shifted.tau_int == close(base.tau_int, 1e-8)

    for factor in (scale, -scale):
        scaled = gamma_method(factor * x)
        assert scaled.window == base.window and scaled.reliable == base.reliable
        assert scaled.mean == pytest.approx(factor * base.mean, rel=1e-9, abs=1e-12 * scale)
        assert scaled.error == close(abs(factor) * base.error, 1e-9)
        assert scaled.tau_int == close(base.tau_int, 1e-9)
        assert scaled.tau_int_error == close(base.tau_int_error, 1e-9)


# ---------------------------------------------------------------- summarize


def long_table(n_chains: int = 4, n_traj: int = 300, seed: int = 15) -> pd.DataFrame:
    """A simulation-like long table, rows shuffled, with a frozen charge."""
    rng = np.random.default_rng(seed)
    plaq = ar1(0.7, n_chains, n_traj, seed=seed + 1)
    frame = pd.DataFrame(
        {
            "chain": np.repeat(np.arange(n_chains), n_traj),
            "trajectory": np.tile(np.arange(n_traj), n_chains),
            "accepted": rng.random(n_chains * n_traj) < 0.8,
            "delta_H": rng.normal(0.02, 0.2, n_chains * n_traj),
            "plaquette": plaq.reshape(-1),
            "topological_charge": np.full(n_chains * n_traj, 1, dtype=np.int64),
            "label": "run-a",  # not numeric: skipped by default
        }
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_summarize_index_columns_and_values():
    table = long_table()
    out = summarize(table, derived={"plaquette^2": lambda t: t.plaquette**2})

    assert list(out.columns) == list(SUMMARY_COLUMNS)
    assert out.index.name == "observable"  # as in summary.csv and the terminal
    assert list(out.index) == [
        "accepted",
        "delta_H",
        "exp(-delta_H)",
        "delta_H_identity(K=2)",
        "plaquette",
        "topological_charge",
        "plaquette^2",
    ]

    # Each row is gamma_method on the (chain, trajectory) pivot.
    wide = table.pivot(index="chain", columns="trajectory")
    expected = {
        "accepted": wide["accepted"].to_numpy(),
        "delta_H": wide["delta_H"].to_numpy(),
        "exp(-delta_H)": np.exp(-wide["delta_H"].to_numpy()),
        "plaquette": wide["plaquette"].to_numpy(),
        "plaquette^2": wide["plaquette"].to_numpy() ** 2,
    }
    for name, arr in expected.items():
        res = gamma_method(arr)
        row = out.loc[name]
        assert row["window"] == res.window and row["n_samples"] == res.n_samples == 1200
        # no slow mode here: the binned cross-check does not take over, so the row is the Gamma method's
        np.testing.assert_allclose(
            row[["mean", "error", "tau_int", "tau_int_error", "gamma_error"]].to_numpy(dtype=float),
            [res.mean, res.error, res.tau_int, res.tau_int_error, res.error],
            rtol=1e-12,
        )
        assert row["binned_error"] == pytest.approx(analysis.binned_error(arr).error, rel=1e-12)
        assert bool(row["reliable"]) and row["note"] == "" and abs(row["drift"]) < 4 or name == "exp(-delta_H)"

    assert out.loc["accepted", "mean"] == pytest.approx(table.accepted.mean())  # acceptance rate
    assert out.loc["exp(-delta_H)", "mean"] == pytest.approx(np.exp(-table.delta_H).mean())
    # The frozen charge is reported, flagged, not raised.
    frozen = out.loc["topological_charge"]
    assert frozen["mean"] == 1.0 and frozen["error"] == 0.0 and not frozen["reliable"]
    assert math.isnan(frozen["tau_int"])


def test_summarize_restricted_columns_and_custom_names():
    table = long_table().rename(columns={"chain": "replica", "trajectory": "step"})
    out = summarize(table, ["plaquette"], chain="replica", order="step", S=2.0)
    assert list(out.index) == ["plaquette"]
    wide = table.pivot(index="replica", columns="step")["plaquette"].to_numpy()
    assert out.loc["plaquette", "tau_int"] == pytest.approx(gamma_method(wide, S=2.0).tau_int)


def test_summarize_trajectory_order_matters():
    # Sorting by trajectory (not row order) is what makes the autocorrelation visible.
    table = long_table()
    tau = summarize(table, ["plaquette"]).loc["plaquette", "tau_int"]
    assert tau == pytest.approx(ar1_tau_int(0.7), rel=0.5)


def test_summarize_unequal_chain_lengths_name_the_lengths():
    table = long_table()
    table = table.drop(table.index[(table.chain == 2) & (table.trajectory > 290)])
    with pytest.raises(ValueError, match=r"unequal lengths.*2: 291"):
        summarize(table)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"columns": ["missing"]}, "not in table"),
        ({"columns": ["label"]}, "not numeric"),
        ({"chain": "walker"}, "chain column 'walker'"),
        ({"order": "time"}, "order column 'time'"),
        ({"derived": {"plaquette": lambda t: t.plaquette}}, "clashes"),
        ({"derived": {"short": lambda t: t.plaquette.iloc[:5]}}, "nan|finite"),
        ({"derived": {"bad": lambda t: np.ones(3)}}, "shape"),
    ],
)
def test_summarize_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        summarize(long_table(n_traj=20), **kwargs)


def test_summarize_duplicate_rows_and_nan_name_the_problem():
    table = long_table(n_traj=20)
    with pytest.raises(ValueError, match="repeat"):
        summarize(pd.concat([table, table.iloc[:1]]))
    table.loc[3, "plaquette"] = np.nan
    with pytest.raises(ValueError, match="quantity 'plaquette'.*finite"):
        summarize(table)
    with pytest.raises(ValueError, match="empty"):
        summarize(table.iloc[:0])


def test_doctests():
    failures, attempted = doctest.testmod(analysis, raise_on_error=False)
    assert attempted > 0 and failures == 0


def test_summarize_reports_a_diverged_trajectory_without_failing():
    t = pd.DataFrame(
        {"chain": [0] * 4 + [1] * 4, "trajectory": list(range(4)) * 2,
         "delta_H": [0.1, -0.2, np.inf, 0.0, 0.3, 0.1, -0.1, 0.2], "plaquette": [0.5, 0.6, 0.55, 0.52, 0.58, 0.61, 0.5, 0.54]}
    )
    out = summarize(t)
    assert not out.loc["delta_H", "reliable"] and "1 of 8 values are not finite" in out.loc["delta_H", "note"]
    assert np.isnan(out.loc["delta_H", "error"])
    assert np.isfinite(out.loc["exp(-delta_H)", "mean"]) and np.isfinite(out.loc["plaquette", "error"])

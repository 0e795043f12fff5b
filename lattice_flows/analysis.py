"""Autocorrelation analysis of Monte Carlo time series with the Gamma method.

The estimator and its automatic window follow

    U. Wolff, "Monte Carlo errors with less errors",
    Comput. Phys. Commun. 156 (2004) 143, hep-lat/0306017,

specialised to a primary observable (the derivative f_alpha of the paper is 1),
with R independent replicas ("chains") of equal length.

Two entry points:

* :func:`gamma_method` takes an array of shape ``(n_chains, n_samples)``, Monte
  Carlo time along axis 1, and returns a :class:`GammaResult`.
* :func:`summarize` takes the long table a simulation writes (one row per chain
  and trajectory) and returns one row of :func:`gamma_method` results per
  observable.

This module depends on numpy and pandas only, so a finished run can be analysed
without torch or the rest of the package.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["GammaResult", "gamma_method", "normalized_autocorrelation", "summarize", "SUMMARY_COLUMNS"]

#: Columns of the frame returned by :func:`summarize`, in order.
SUMMARY_COLUMNS = (
    "mean",
    "error",
    "tau_int",
    "tau_int_error",
    "window",
    "n_samples",
    "reliable",
    "note",
)


@dataclasses.dataclass(frozen=True)
class GammaResult:
    """Result of :func:`gamma_method` for one observable.

    Attributes:
        mean: Mean over all chains and samples.
        error: Standard error of ``mean``, sqrt(C_F / N), autocorrelations included.
            Exactly 0 for a constant series.
        tau_int: Integrated autocorrelation time, C_F / (2 Gamma(0)), in units of
            one sample (0.5 for independent samples). ``nan`` for a constant series.
        tau_int_error: Statistical error of ``tau_int``, Wolff's eq. (42):
            2 tau_int sqrt((W + 1/2 - tau_int) / N). ``nan`` for a constant series.
        window: Summation window W chosen by Wolff's automatic criterion (0 for a
            constant series).
        n_samples: Total number of samples N, summed over chains.
        n_chains: Number of independent chains R.
        gamma: Normalised, bias-corrected autocorrelation function rho(t) for
            t = 0, ..., min(2 W, N_r // 2), shape (T,); rho(0) = 1. Empty for a
            constant series.
        reliable: False when the estimate should not be trusted as it stands: the
            series is constant, or the window did not close (see ``note``).
        note: Empty when ``reliable``; otherwise why not.
    """

    mean: float
    error: float
    tau_int: float
    tau_int_error: float
    window: int
    n_samples: int
    n_chains: int
    gamma: np.ndarray = dataclasses.field(repr=False, compare=False)
    reliable: bool = True
    note: str = ""


def gamma_method(data, *, S: float = 1.5) -> GammaResult:
    """Mean, error and integrated autocorrelation time of a Monte Carlo series.

    Args:
        data: Array-like of shape (n_chains, n_samples), Monte Carlo time along
            axis 1; every row is an independent chain (replica) and all rows have
            the same length N_r. A 1-D array of shape (n_samples,) is one chain.
            Bool data are treated as 0/1 (so the mean of an acceptance flag is the
            acceptance rate). At least 2 samples per chain.
        S: Wolff's S_tau, the factor between the window and the estimated
            exponential autocorrelation time. 1.5 is Wolff's default; larger values
            trade more statistical error for less truncation bias. Must be > 0.

    Returns:
        A :class:`GammaResult`.

    Raises:
        ValueError: For data that is not a real-valued 1-D or 2-D array, holds NaN
            or infinity, or has fewer than 2 samples per chain; for S <= 0.

    Method (Wolff, sections 3 and 3.3), with N = R N_r samples in total:

    * deviations from the overall mean, d_{r,i} = a_{r,i} - abar;
    * Gamma(t) = sum_r sum_{i=1}^{N_r - t} d_{r,i} d_{r,i+t} / sum_r (N_r - t),
      so only pairs within one chain enter (computed with an FFT, O(N log N));
    * for W = 1, 2, ..., W_max = N_r // 2:
      tau_int(W) = 1/2 + sum_{t=1}^{W} Gamma(t) / Gamma(0),
      tau(W) = S / ln((2 tau_int(W) + 1) / (2 tau_int(W) - 1)), or tau(W) =
      machine epsilon when tau_int(W) <= 1/2 (Wolff's convention, which closes the
      window at once), and the window is the first W with
      g(W) = exp(-W / tau(W)) - tau(W) / sqrt(W N) < 0;
    * C_F(W) = Gamma(0) + 2 sum_{t=1}^{W} Gamma(t); the bias of Gamma from
      subtracting the estimated mean is corrected by Gamma(t) += C_F(W) / N
      (eq. (49)), and C_F(W) is recomputed from the corrected Gamma;
    * error = sqrt(C_F / N), tau_int = C_F / (2 Gamma(0)),
      tau_int_error = 2 tau_int sqrt((W + 1/2 - tau_int) / N) (eq. (42)).

    Two cases are flagged with ``reliable=False`` and a ``note`` instead of raising:

    * A constant series (Gamma(0) == 0, e.g. a topological charge frozen by the
      sampler): the mean is exact, error 0, tau_int and its error nan, window 0.
      A zero error here does not mean the observable is known; the sampler did
      not move it.
    * A window that does not close before W_max = N_r // 2: the estimate at W_max
      is returned; tau_int and the error are then likely underestimated, and the
      chains should be made longer (Wolff advises N >> tau_int).

    Example:
        >>> import numpy as np
        >>> res = gamma_method(np.random.default_rng(0).normal(size=(4, 10_000)))
        >>> abs(res.tau_int - 0.5) < 3 * res.tau_int_error
        True
        >>> res.n_samples, res.n_chains, float(res.gamma[0])
        (40000, 4, 1.0)
        >>> frozen = gamma_method([[2, 2, 2], [2, 2, 2]])
        >>> frozen.mean, frozen.error, frozen.tau_int, frozen.reliable
        (2.0, 0.0, nan, False)
    """
    S = _check_S(S)
    x = _as_chains(data)
    n_chains, n_per_chain = x.shape
    n_total = x.size

    # Compare with the first value rather than test Gamma(0) == 0: the mean of a
    # constant like 0.1 is not exactly 0.1 in floating point, so the deviations
    # would be O(1e-17) instead of 0 and Gamma(0) would not vanish.
    first = x.flat[0]
    if np.all(x == first):
        return GammaResult(
            mean=float(first),
            error=0.0,
            tau_int=math.nan,
            tau_int_error=math.nan,
            window=0,
            n_samples=n_total,
            n_chains=n_chains,
            gamma=np.empty(0),
            reliable=False,
            note=(
                "constant series (Gamma(0) = 0): the mean is exact but the sampler "
                "did not move this observable, so error 0 says nothing about its "
                "uncertainty and tau_int is undefined"
            ),
        )

    mean = float(x.mean())
    w_max = n_per_chain // 2
    gamma = _autocovariance(x - mean, w_max)

    window, closed = _automatic_window(gamma, S, n_total)

    c_f = gamma[0] + 2.0 * gamma[1 : window + 1].sum()
    # Subtracting the estimated mean biases every Gamma(t) by -C_F/N to leading
    # order (Wolff eq. (49)); add it back, then recompute C_F from the result.
    gamma = gamma + c_f / n_total
    c_f = gamma[0] + 2.0 * gamma[1 : window + 1].sum()

    rho = gamma[: min(2 * window, w_max) + 1] / gamma[0]
    tau_int = c_f / (2.0 * gamma[0])
    # W + 1/2 - tau_int >= 0 holds when |rho(t)| <= 1, which the chain-wise
    # normalisation by (N_r - t) does not guarantee for tiny chains; clip there.
    tau_int_error = 2.0 * tau_int * math.sqrt(max(window + 0.5 - tau_int, 0.0) / n_total)
    error = math.sqrt(c_f / n_total) if c_f > 0 else math.nan

    note = ""
    if c_f <= 0.0:
        # Only strongly anticorrelated, very short series get here (e.g. [1, 2]);
        # a variance cannot be negative, so report no error rather than a wrong one.
        tau_int_error = math.nan
        note = (
            f"non-positive C_F = {c_f:.4g} at W = {window} (series too short or "
            "anticorrelated): error and tau_int_error are undefined (nan)"
        )
    elif not closed:
        note = (
            f"automatic window did not close before W_max = N_r // 2 = {w_max} "
            f"(N_r = {n_per_chain} samples per chain); tau_int = {tau_int:.4g} and the "
            "error are estimated at W_max and are probably too small: run longer chains"
        )

    return GammaResult(
        mean=mean,
        error=error,
        tau_int=float(tau_int),
        tau_int_error=float(tau_int_error),
        window=int(window),
        n_samples=n_total,
        n_chains=n_chains,
        gamma=rho,
        reliable=not note,
        note=note,
    )


def normalized_autocorrelation(data, t_max: int | None = None, *, S: float = 1.5) -> np.ndarray:
    """The normalised autocorrelation function rho(t) = Gamma(t) / Gamma(0), t = 0, ..., t_max.

    Computed exactly as :func:`gamma_method` computes ``GammaResult.gamma``: deviations from the
    mean over all chains, Gamma(t) pooled over chains (pairs within one chain only, divided by
    sum_r (N_r - t)), and the bias correction Gamma(t) += C_F(W) / N with Wolff's automatic window W
    (the ``window`` of :func:`gamma_method` with the same ``S``). So ``rho[:len(res.gamma)]``
    equals ``res.gamma`` for ``res = gamma_method(data, S=S)``; this function only lets the lags
    run further, to show how rho(t) decays beyond the window.

    Args:
        data: Array-like of shape (n_chains, n_samples), Monte Carlo time along axis 1, or one
            chain of shape (n_samples,); the same as :func:`gamma_method` accepts.
        t_max: Largest lag, 0 <= t_max <= N_r - 1 (N_r samples per chain). Default N_r // 2, the
            largest window the Gamma method considers. Lags beyond it rest on few pairs and are noisy.
        S: Wolff's S_tau, which fixes the window of the bias correction (see :func:`gamma_method`).

    Returns:
        Float array of shape (t_max + 1,) with rho(0) = 1. For a constant series Gamma(0) = 0 and
        rho is undefined: every entry is nan.

    Raises:
        ValueError: For data :func:`gamma_method` rejects, or ``t_max`` outside 0..N_r - 1.

    Example:
        >>> import numpy as np
        >>> rho = normalized_autocorrelation(np.random.default_rng(0).normal(size=(4, 1000)), t_max=3)
        >>> rho.shape, float(rho[0]), bool(np.all(abs(rho[1:]) < 0.1))
        ((4,), 1.0, True)
    """
    S = _check_S(S)
    x = _as_chains(data)
    n_per_chain = x.shape[1]
    w_max = n_per_chain // 2
    if t_max is None:
        t_max = w_max
    if isinstance(t_max, bool) or not isinstance(t_max, (int, np.integer)) or not 0 <= t_max <= n_per_chain - 1:
        raise ValueError(
            f"t_max must be an integer in 0..N_r - 1 = {n_per_chain - 1} (N_r = {n_per_chain} samples "
            f"per chain), got {t_max!r}"
        )
    t_max = int(t_max)
    if np.all(x == x.flat[0]):
        return np.full(t_max + 1, math.nan)

    gamma = _autocovariance(x - x.mean(), max(t_max, w_max))
    window, _ = _automatic_window(gamma[: w_max + 1], S, x.size)
    c_f = gamma[0] + 2.0 * gamma[1 : window + 1].sum()
    gamma = gamma[: t_max + 1] + c_f / x.size
    return gamma / gamma[0]


def summarize(
    table: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    chain: str = "chain",
    order: str = "trajectory",
    S: float = 1.5,
    derived: Mapping[str, Callable[[pd.DataFrame], pd.Series]] | None = None,
) -> pd.DataFrame:
    """Apply :func:`gamma_method` to every observable of a long simulation table.

    Args:
        table: Long table with one row per chain and Monte Carlo step, as the
            simulation writes it, e.g. columns ``chain, trajectory, accepted,
            delta_H, plaquette, ...``. Rows may come in any order; every chain must
            have the same number of rows, and (chain, order) pairs must be unique.
        columns: Columns to analyse. Default: every numeric or bool column except
            ``chain`` and ``order``.
        chain: Column identifying the chain (replica).
        order: Column giving the Monte Carlo time within a chain; rows are sorted
            by it.
        S: Wolff's S_tau, passed to :func:`gamma_method`.
        derived: Extra quantities, ``{name: f}`` where ``f(table)`` returns a Series
            (or array) with one value per row, e.g.
            ``{"topological_charge^2": lambda t: t.topological_charge ** 2}``.
            ``f`` is called with the table sorted by (chain, order); a returned
            Series is aligned on the index.

    Returns:
        DataFrame with one row per quantity (index named ``quantity``) and the
        columns of :data:`SUMMARY_COLUMNS`: mean, error, tau_int, tau_int_error,
        window, n_samples, reliable, note. Rows come in the order of ``columns``,
        then ``derived``. Each column is pivoted to shape (n_chains, n_samples)
        before the analysis, so autocorrelations are measured within chains only.

        Two columns get special treatment because of what HMC writes:

        * ``delta_H``: a row ``exp(-delta_H)`` follows it. For an exact,
          reversible, area-preserving integrator <exp(-delta_H)> = 1, the
          standard check of an HMC implementation.
        * ``accepted`` (bool or 0/1): analysed as it is, so its mean is the
          acceptance rate and its error accounts for autocorrelation.

        A ``delta_H`` with non-finite values (a trajectory whose energy diverged)
        gets its plain mean, no error, ``reliable`` false and a note saying how many;
        non-finite values of any other quantity raise.

    Raises:
        ValueError: If a named column is missing or not numeric, the table is
            empty, (chain, order) pairs repeat, chains have unequal lengths (the
            lengths are named), a derived name clashes or a derived quantity has the
            wrong length, or :func:`gamma_method` rejects a column (the column is
            named).

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"chain": [0, 0, 0, 1, 1, 1],
        ...                   "trajectory": [0, 1, 2, 0, 1, 2],
        ...                   "delta_H": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]})
        >>> row = summarize(t).loc["exp(-delta_H)"]
        >>> float(row["mean"]), float(row["error"]), bool(row["reliable"])
        (1.0, 0.0, False)
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas.DataFrame, got {type(table).__name__}")
    for role, name in (("chain", chain), ("order", order)):
        if name not in table.columns:
            raise ValueError(
                f"{role} column {name!r} not in table; columns: {list(table.columns)}"
            )
    if len(table) == 0:
        raise ValueError("table is empty; expected at least 2 rows per chain")

    if columns is None:
        columns = [
            c
            for c in table.columns
            if c not in (chain, order) and pd.api.types.is_numeric_dtype(table[c])
        ]
    else:
        columns = list(columns)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"columns {missing} not in table; columns: {list(table.columns)}")
        bad = [c for c in columns if not pd.api.types.is_numeric_dtype(table[c])]
        if bad:
            raise ValueError(
                f"columns {bad} are not numeric or bool (dtypes "
                f"{[str(table[c].dtype) for c in bad]}); expected numeric or bool columns"
            )

    if table.duplicated([chain, order]).any():
        dup = table.loc[table.duplicated([chain, order], keep=False), [chain, order]]
        raise ValueError(
            f"({chain!r}, {order!r}) pairs repeat, e.g. {dup.iloc[0].tolist()}; "
            "expected one row per chain and step"
        )
    lengths = table.groupby(chain, sort=True).size()
    if lengths.nunique() != 1:
        raise ValueError(
            f"chains have unequal lengths {lengths.to_dict()} (chain: rows); "
            "gamma_method needs chains of equal length: truncate them to the shortest"
        )
    n_chains = len(lengths)
    n_per_chain = int(lengths.iloc[0])

    # A stable sort by (chain, order) makes each chain a contiguous block in Monte
    # Carlo order, so a reshape is the pivot.
    ordered = table.sort_values([chain, order], kind="stable")

    quantities: dict[str, pd.Series | np.ndarray] = {}
    for c in columns:
        quantities[c] = ordered[c]
        if c == "delta_H":
            quantities["exp(-delta_H)"] = np.exp(-ordered[c].to_numpy(dtype=float))
    for name, f in (derived or {}).items():
        if name in quantities:
            raise ValueError(
                f"derived quantity {name!r} clashes with an analysed quantity; "
                f"analysed: {list(quantities)}"
            )
        values = f(ordered)
        if isinstance(values, pd.Series):
            values = values.reindex(ordered.index)
        values = np.asarray(values)
        if values.shape != (len(ordered),):
            raise ValueError(
                f"derived quantity {name!r} has shape {values.shape}; expected one "
                f"value per row, shape ({len(ordered)},)"
            )
        quantities[name] = values

    rows = {}
    for name, values in quantities.items():
        values = np.asarray(values)
        finite = np.isfinite(values.astype(float))
        if name in ("delta_H", "exp(-delta_H)") and not finite.all():
            # a trajectory whose energy diverged is a sampler's outcome, not a bug: report, don't fail
            rows[name] = {
                "mean": float(np.mean(values.astype(float))), "error": math.nan, "tau_int": math.nan,
                "tau_int_error": math.nan, "window": 0, "n_samples": values.size, "reliable": False,
                "note": f"{values.size - int(finite.sum())} of {values.size} values are not finite; no error estimate",
            }
            continue
        try:
            res = gamma_method(values.reshape(n_chains, n_per_chain), S=S)
        except ValueError as exc:
            raise ValueError(f"quantity {name!r}: {exc}") from exc
        rows[name] = {c: getattr(res, c) for c in SUMMARY_COLUMNS}

    out = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_COLUMNS))
    out.index.name = "quantity"
    return out.astype({"window": int, "n_samples": int, "reliable": bool})


# --------------------------------------------------------------------------- helpers


def _check_S(S) -> float:
    try:
        S = float(S)
    except (TypeError, ValueError):
        raise ValueError(f"S must be a positive number, got {S!r}") from None
    if not (math.isfinite(S) and S > 0):
        raise ValueError(f"S must be a positive finite number, got {S!r}")
    return S


def _as_chains(data) -> np.ndarray:
    """Validate ``data`` and return it as float64 of shape (n_chains, n_samples)."""
    arr = np.asarray(data)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise ValueError(f"data must be real numbers or bools, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"data must be real, got complex dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2:
        raise ValueError(
            f"data must have shape (n_chains, n_samples) or (n_samples,), got shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(
            f"data of shape {arr.shape} has too few samples: expected at least 1 chain "
            "of at least 2 samples, Monte Carlo time along the last axis"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"data must be finite; found {arr[tuple(bad)]} at (chain, sample) = "
            f"{tuple(int(i) for i in bad)}"
        )
    return arr


def _autocovariance(dev: np.ndarray, t_max: int) -> np.ndarray:
    """Gamma(t) for t = 0..t_max from deviations ``dev`` of shape (R, N_r), shape (t_max + 1,).

    Sums d_{r,i} d_{r,i+t} over chains and i, and divides by sum_r (N_r - t).
    """
    n_chains, n = dev.shape
    # Zero-padding to n + t_max suffices: a circular lag t <= t_max then only wraps
    # onto the zeros, so no pair crosses the end of a chain or enters another chain.
    size = _next_fast_len(n + t_max)
    power = np.zeros(size // 2 + 1)
    # Chunk over chains to bound the memory of the complex spectra.
    step = max(1, (1 << 22) // size)
    for start in range(0, n_chains, step):
        spec = np.fft.rfft(dev[start : start + step], n=size, axis=1)
        power += (spec.real**2 + spec.imag**2).sum(axis=0)
    sums = np.fft.irfft(power, n=size)[: t_max + 1]
    return sums / (n_chains * (n - np.arange(t_max + 1)))


def _automatic_window(gamma: np.ndarray, S: float, n_total: int) -> tuple[int, bool]:
    """Wolff's automatic window from Gamma(0..W_max); returns (W, closed)."""
    w_max = len(gamma) - 1
    w = np.arange(1, w_max + 1)
    # G(W) = tau_int(W) - 1/2, so (2 tau_int + 1) / (2 tau_int - 1) = (G + 1) / G.
    g_int = np.cumsum(gamma[1:]) / gamma[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tau = np.where(
            g_int > 0,
            S / np.log1p(1.0 / np.where(g_int > 0, g_int, 1.0)),
            np.finfo(float).eps,
        )
        g = np.exp(-w / tau) - tau / np.sqrt(w * float(n_total))
    negative = np.flatnonzero(g < 0)
    if negative.size:
        return int(w[negative[0]]), True
    return w_max, False


def _next_fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n, a length pocketfft transforms quickly."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best

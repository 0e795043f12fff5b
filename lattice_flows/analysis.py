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

This module computes with numpy and pandas only (no tensors), so a finished run's
table is analysed as it is read from disk; the table's reserved column names come
from :mod:`lattice_flows.run_table`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .run_table import ACCEPTED, CHAIN, DELTA_H, TRAJECTORY

__all__ = [
    "GammaResult",
    "BinnedResult",
    "gamma_method",
    "binned_error",
    "normalized_autocorrelation",
    "summarize",
    "format_value_error",
    "SUMMARY_COLUMNS",
    "DRIFT_THRESHOLD",
    "IDENTITY_K",
]

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
    "gamma_error",
    "binned_error",
    "drift",
)

#: Standard errors by which the means of the first and second half of a series may differ before
#: :func:`summarize` calls the series not thermalized. For a stationary series the difference is
#: normal with the quoted error, so a row trips by chance with probability 2 Phi(-4) = 6.3e-5, and a
#: summary of ~10 rows with probability ~6e-4; a drift of a few standard errors of the half means
#: (the chain still relaxing) is caught.
DRIFT_THRESHOLD = 4.0

#: The cut K of the check row ``delta_H_identity(K=2)`` of :func:`summarize`:
#: <e^{-dH} 1[dH >= -K]> + P(dH > K) = 1 for every exact sampler, each term bounded by e^K.
IDENTITY_K = 2.0
#: The summary row of ``<exp(-delta_H)>`` (1 in expectation for every exact sampler).
EXP_DELTA_H = f"exp(-{DELTA_H})"
#: The summary row of the energy identity with the cut :data:`IDENTITY_K`: ``delta_H_identity(K=2)``.
IDENTITY_ROW = f"{DELTA_H}_identity(K={IDENTITY_K:g})"

#: The binned error wins over the Gamma method's when it is larger by more than this many of its
#: own standard errors (its relative standard error is 1 / sqrt(2 (n_blocks - 1))).
_BINNED_WINS = 2.0

#: A chain shorter than this many tau_int makes a row unreliable: its error rests on a few
#: autocorrelation times, and a chain that has not thermalized cannot be told from one that has.
_MIN_LENGTH = 10.0

#: Fewest blocks :func:`binned_error` forms (its relative error is then at most 1/sqrt(62) = 13%).
_MIN_BLOCKS = 32


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
        tail: The part of ``tau_int`` from the exponential tail, ``tau_exp |rho(W + 1)|``,
            when :func:`gamma_method` was given ``tau_exp``; else 0.
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
    tail: float = 0.0


def gamma_method(data, *, S: float = 1.5, tau_exp: float | None = None, n_sigma: float = 1.0) -> GammaResult:
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
        tau_exp: The exponential autocorrelation time of the slowest mode of the
            simulation (in samples), for the tail correction of Schaefer, Sommer and
            Virotta (arXiv:1009.5228, sec. 4.2): ``None`` (default) for Wolff's window
            alone. With it, the sum over rho(t) is cut at the first W_u where rho(W_u)
            is within ``n_sigma`` of its error of 0 (Wolff's eq. (E.11) for the error),
            and the tail is modelled as one exponential, ``tau_exp |rho(W_u + 1)|``,
            which is added to tau_int (its error ``tau_exp drho(W_u + 1)`` is added to
            tau_int_error in quadrature; the error of ``tau_exp`` itself is not). Every
            observable of a run couples to its slowest mode, so the same ``tau_exp``
            serves them all; the topological charge's own tau_int is an estimate of it.
        n_sigma: Standard errors of rho(t) that fix W_u (> 0; SSV and pyerrors use 1).

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
    if tau_exp is not None:
        tau_exp = _check_positive("tau_exp", tau_exp)
    n_sigma = _check_positive("n_sigma", n_sigma)
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
    tail = tail_error = 0.0
    if tau_exp is not None:
        # Schaefer-Sommer-Virotta: sum rho(t) while it is significant, then attach tau_exp rho
        window, closed, tail, tail_error = _exponential_tail(gamma / gamma[0], tau_exp, n_sigma, n_total)
    c_f = gamma[0] + 2.0 * gamma[1 : window + 1].sum()

    rho = gamma[: min(2 * window, w_max) + 1] / gamma[0]
    tau_window = c_f / (2.0 * gamma[0])
    # W + 1/2 - tau_int >= 0 holds when |rho(t)| <= 1, which the chain-wise
    # normalisation by (N_r - t) does not guarantee for tiny chains; clip there.
    tau_int_error = 2.0 * tau_window * math.sqrt(max(window + 0.5 - tau_window, 0.0) / n_total)
    tau_int = tau_window + tail
    if tail:
        tau_int_error = math.hypot(tau_int_error, tail_error)
        c_f = 2.0 * tau_int * gamma[0]
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
    elif not closed and tau_exp is not None:
        note = (
            f"rho(t) stayed significant up to W = {window} (N_r = {n_per_chain} samples per chain), "
            f"so no exponential tail with tau_exp = {tau_exp:.4g} was attached: run longer chains"
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
        tail=float(tail),
    )


@dataclasses.dataclass(frozen=True)
class BinnedResult:
    """Result of :func:`binned_error`.

    Attributes:
        error: Standard error of the mean from the scatter of block means; 0 for a constant
            series, ``nan`` when fewer than 2 blocks of at least 1 sample can be formed.
        error_error: Its statistical error, ``error / sqrt(2 (n_blocks - 1))`` (Gaussian block means).
        block_size: Samples per block B.
        n_blocks: Number of blocks n_b, summed over chains.
    """

    error: float
    error_error: float
    block_size: int
    n_blocks: int


def binned_error(data, *, min_blocks: int = _MIN_BLOCKS) -> BinnedResult:
    """Standard error of the mean by binning (blocking), a cross-check of :func:`gamma_method`.

    Args:
        data: Array-like of shape (n_chains, n_samples), Monte Carlo time along axis 1 (or one chain,
            shape (n_samples,)), as :func:`gamma_method` takes it.
        min_blocks: Fewest blocks to form, >= 2. Default 32: the error is then known to 13%.

    Returns:
        A :class:`BinnedResult`.

    Each chain of N_r samples is cut into m = max(1, ceil(min_blocks / R)) consecutive blocks of
    B = N_r // m samples (the first N_r - m B samples of each chain are left out). With the
    n_b = R m block means y_k and their mean ybar,

        error^2 = sum_k (y_k - ybar)^2 / (n_b (n_b - 1)),    error_error = error / sqrt(2 (n_b - 1)).

    Blocks as long as the data allow make the estimate rest on no model of rho(t): its bias is
    of relative size ~tau / B, whatever the shape of the autocorrelation function, where the Gamma
    method's window (Wolff's S = 1.5) can stop before a small but slow tail (a slow mode such as the
    topological charge coupling weakly to the observable) and miss it. The price is noise.

    Raises:
        ValueError: For data :func:`gamma_method` rejects, or ``min_blocks`` not an integer >= 2.

    Example:
        >>> import numpy as np
        >>> b = binned_error(np.random.default_rng(0).normal(size=(4, 10_000)))
        >>> b.n_blocks, b.block_size, abs(b.error - 0.005) < 3 * b.error_error
        (32, 1250, True)
    """
    _check_min_blocks(min_blocks)
    x = _as_chains(data)
    n_chains, n_per_chain = x.shape
    per_chain = max(1, -(-int(min_blocks) // n_chains))
    size = n_per_chain // per_chain
    n_blocks = n_chains * per_chain
    if size < 1 or n_blocks < 2:
        return BinnedResult(math.nan, math.nan, int(size), int(n_blocks))
    used = x[:, n_per_chain - per_chain * size :]
    means = used.reshape(n_chains, per_chain, size).mean(axis=2).reshape(-1)
    if np.all(used == used.flat[0]):
        return BinnedResult(0.0, 0.0, int(size), int(n_blocks))
    error = math.sqrt(float(np.var(means, ddof=1)) / n_blocks)
    return BinnedResult(error, error / math.sqrt(2.0 * (n_blocks - 1)), int(size), int(n_blocks))


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
    chain: str = CHAIN,
    order: str = TRAJECTORY,
    S: float = 1.5,
    derived: Mapping[str, Callable[[pd.DataFrame], pd.Series]] | None = None,
    drift_threshold: float = DRIFT_THRESHOLD,
    min_blocks: int = _MIN_BLOCKS,
    tau_exp: float | str | None = None,
) -> pd.DataFrame:
    """Errors, autocorrelation times and reliability checks of every observable of a long simulation table.

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
        drift_threshold: Standard errors (> 0) beyond which the difference of the two
            halves' means calls a series not thermalized (:data:`DRIFT_THRESHOLD`).
        min_blocks: Fewest blocks of the binning cross-check (:func:`binned_error`), >= 2.
        tau_exp: The slowest mode's exponential autocorrelation time, for the
            Schaefer-Sommer-Virotta tail correction of every row (see
            :func:`gamma_method`): a number of updates, or the name of the analysed
            quantity that is the slow mode (e.g. ``"topological_charge"``), whose own
            Gamma-method tau_int is then taken as tau_exp. Default ``None``: none.

    Returns:
        DataFrame with one row per quantity (index named ``observable``, as in the
        run folder's ``summary.csv``) and the columns of :data:`SUMMARY_COLUMNS`:

        * ``mean``, ``error`` (standard error of the mean), ``tau_int``,
          ``tau_int_error`` (in units of one row of a chain), ``window``, ``n_samples``;
        * ``gamma_error``: the Gamma method's error (:func:`gamma_method`), and
          ``binned_error``: the error from block means (:func:`binned_error`). ``error``
          is ``gamma_error`` unless ``binned_error`` is larger by more than 2 of its own
          standard errors: then the autocorrelation function has a slow tail the
          automatic window did not reach (a slow mode), and ``error`` is
          ``binned_error``, ``tau_int`` the value it implies,
          ``gamma_tau_int * (binned_error / gamma_error)^2``, with a note;
        * ``drift``: (mean of the second half of every chain - mean of the first half)
          over its standard error (the halves' errors found as ``error`` is). A
          stationary series gives a standard normal; ``|drift| > drift_threshold``
          makes the row unreliable: the chains had not thermalized;
        * ``reliable``: False when the row should not be trusted as it stands: a
          constant series, a window that did not close, a drift, a heavy tail (below),
          a non-finite value. ``note`` says why, and also holds remarks that do not
          make a row unreliable (the binned error taking over).

        Rows come in the order of ``columns``, then ``derived``. Each column is
        pivoted to shape (n_chains, n_samples) before the analysis, so
        autocorrelations are measured within chains only.

        Columns with special treatment because of what the samplers write:

        * ``delta_H``: two rows follow it. ``exp(-delta_H)``: for an exact sampler
          <exp(-delta_H)> = 1, but when a fraction f of the updates have
          delta_H > ln N (N = n_samples), the mirror events delta_H < -ln N that hold
          a share f of that mean are expected less than once in the sample, so the
          sample mean falls short of 1 by about f: when f exceeds the row's error the
          row is marked unreliable (a heavy tail) and the next row is the check to
          read. ``delta_H_identity(K=2)``: the mean of
          ``e^{-dH} 1[dH >= -K] + 1[dH > K]`` with K = :data:`IDENTITY_K`, which is
          exactly 1 for every exact sampler (``docs/equations.md``) and, being bounded
          by e^K, has an honest error however heavy the tail.
        * ``accepted`` (bool or 0/1): analysed as it is, so its mean is the
          acceptance rate and its error accounts for autocorrelation.
        * When ``delta_H`` is 0 and ``accepted`` (if present) 1 in every row, the sampler
          has no accept/reject step (exact sampling): these rows are constant by
          construction and stay reliable, with a note, instead of being flagged as
          constant series.

        A ``delta_H`` with non-finite values (a trajectory whose energy diverged)
        gets its plain mean, no error, ``reliable`` false and a note saying how many
        (and so do the two rows after it where they are not finite); non-finite values
        of any other quantity raise.

    Raises:
        ValueError: If a named column is missing or not numeric, the table is
            empty, (chain, order) pairs repeat, chains have unequal lengths (the
            lengths are named), a derived name clashes or a derived quantity has the
            wrong length, :func:`gamma_method` rejects a column (the column is
            named), or ``drift_threshold`` or ``min_blocks`` is out of range.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"chain": [0, 0, 0, 1, 1, 1],
        ...                   "trajectory": [0, 1, 2, 0, 1, 2],
        ...                   "delta_H": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]})
        >>> row = summarize(t).loc["exp(-delta_H)"]
        >>> float(row["mean"]), float(row["error"]), bool(row["reliable"]), row["note"]
        (1.0, 0.0, True, 'constant by construction: the sampler has no accept/reject step')
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas.DataFrame, got {type(table).__name__}")
    for role, name in (("chain", chain), ("order", order)):
        if name not in table.columns:
            raise ValueError(
                f"{role} column {name!r} not in table; columns: {list(table.columns)}"
            )
    try:
        threshold = float(drift_threshold)
    except (TypeError, ValueError):
        threshold = math.nan
    if isinstance(drift_threshold, bool) or not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"drift_threshold must be a positive number of standard errors, got {drift_threshold!r}")
    drift_threshold = threshold
    _check_min_blocks(min_blocks)
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

    identity = IDENTITY_ROW
    quantities: dict[str, pd.Series | np.ndarray] = {}
    for c in columns:
        quantities[c] = ordered[c]
        if c == DELTA_H:
            dh = ordered[c].to_numpy(dtype=float)
            quantities[EXP_DELTA_H] = np.exp(-dh)
            quantities[identity] = _identity_terms(dh, IDENTITY_K)
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

    if isinstance(tau_exp, str):
        if tau_exp not in quantities:
            raise ValueError(f"tau_exp {tau_exp!r} is not an analysed quantity; analysed: {list(quantities)}")
        slow = gamma_method(np.asarray(quantities[tau_exp], dtype=float).reshape(n_chains, n_per_chain), S=S)
        if not (math.isfinite(slow.tau_int) and slow.tau_int > 0):
            raise ValueError(f"tau_exp {tau_exp!r}: its tau_int is undefined ({slow.note}); pass a number instead")
        tau_exp = slow.tau_int
    elif tau_exp is not None:
        tau_exp = _check_positive("tau_exp", tau_exp)

    rows = {}
    for name, values in quantities.items():
        values = np.asarray(values)
        finite = np.isfinite(values.astype(float))
        if name in (DELTA_H, EXP_DELTA_H, identity) and not finite.all():
            # a trajectory whose energy diverged is a sampler's outcome, not a bug: report, don't fail
            rows[name] = {
                "mean": float(np.mean(values.astype(float))), "error": math.nan, "tau_int": math.nan,
                "tau_int_error": math.nan, "window": 0, "n_samples": values.size, "reliable": False,
                "note": f"{values.size - int(finite.sum())} of {values.size} values are not finite; no error estimate",
                "gamma_error": math.nan, "binned_error": math.nan, "drift": math.nan,
            }
            continue
        x = values.reshape(n_chains, n_per_chain)
        try:
            row, failures, remarks = _analyse(x, S, min_blocks, tau_exp)
        except ValueError as exc:
            raise ValueError(f"quantity {name!r}: {exc}") from exc
        if name == EXP_DELTA_H:
            # heavy-tailed: its halves' means scatter beyond their errors; the identity row has the drift test
            row["drift"] = math.nan
            tail = _heavy_tail(quantities[DELTA_H], row["error"], identity)
            if tail:
                failures.append(tail)
        else:
            row["drift"] = _drift(x, S, min_blocks, tau_exp)
            if abs(row["drift"]) > drift_threshold:
                failures.append(
                    f"not thermalized: the chains' second half differs from their first half by "
                    f"{row['drift']:+.1f} standard errors (limit {drift_threshold:g}); discard more "
                    "thermalization or run longer"
                )
        row["reliable"] = not failures
        row["note"] = "; ".join(failures + remarks)
        rows[name] = row

    bookkeeping = [name for name in (ACCEPTED, DELTA_H, EXP_DELTA_H, identity) if name in rows]
    if DELTA_H in rows and all(rows[name]["error"] == 0.0 for name in bookkeeping) and rows[DELTA_H]["mean"] == 0.0 and (
        ACCEPTED not in rows or rows[ACCEPTED]["mean"] == 1.0
    ):
        # a sampler without an accept/reject step (exact sampling): these rows are constant by construction
        for name in bookkeeping:
            rows[name].update(reliable=True, note="constant by construction: the sampler has no accept/reject step")

    out = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_COLUMNS))
    out.index.name = "observable"
    return out.astype({"window": int, "n_samples": int, "reliable": bool})


def format_value_error(value: float, error: float, *, digits: int = 2) -> str:
    """``value`` with its standard ``error`` in the concise notation, the error's last digits in brackets.

    The error is rounded to ``digits`` significant digits (>= 1) and the value to the same decimal
    place: ``format_value_error(0.912364, 0.000123) == "0.91236(12)"``. Values or errors of 10^6
    and above, or below 10^-3 (both), are written with a common power of ten,
    ``"1.235(30)e-08"``. An error of 0 gives the value and ``(0)``; an error that is nan or
    infinite gives the value to 6 significant digits and ``(?)``; a nan value gives ``"nan"``.

    Example:
        >>> format_value_error(0.912364, 0.000123), format_value_error(1234.5, 56.0)
        ('0.91236(12)', '1234(56)')
        >>> format_value_error(0.003, 0.12), format_value_error(-2.5e-8, 3e-10), format_value_error(1.0, 0.0)
        ('0.00(12)', '-2.500(30)e-08', '1(0)')
    """
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or digits < 1:
        raise ValueError(f"digits must be an integer >= 1, got {digits!r}")
    value, error = float(value) + 0.0, float(error)  # + 0.0: no '-0'
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return f"{value}"
    if not math.isfinite(error) or error < 0:
        return f"{value:.6g}(?)"
    if error == 0:
        return f"{value:.6g}(0)"
    scale = max(abs(value), error)
    power = 0
    if scale >= 1e6 or scale < 1e-3:
        power = math.floor(math.log10(scale))
        value, error = value / 10.0**power, error / 10.0**power
    decimals = digits - 1 - math.floor(math.log10(error))
    if round(error, decimals) >= 10.0 ** (digits - decimals):  # 0.0996 -> 0.10: one digit fewer
        decimals -= 1
    if decimals > 0:
        text = f"{value:.{decimals}f}({round(error * 10.0**decimals):d})"
    else:
        step = 10.0 ** (-decimals)
        text = f"{round(value / step) * step:.0f}({round(error / step) * step:.0f})"
    return text + (f"e{power:+03d}" if power else "")


def _identity_terms(dh: np.ndarray, k: float) -> np.ndarray:
    """``e^{-dH} 1[dH >= -k] + 1[dH > k]`` per update, shape of ``dh``; nan where ``dh`` is nan."""
    terms = np.where(dh >= -k, np.exp(-np.maximum(dh, -k)), 0.0) + (dh > k)  # exp(...) <= e^k
    return np.where(np.isnan(dh), math.nan, terms)


def _analyse(x: np.ndarray, S: float, min_blocks: int, tau_exp: float | None) -> tuple[dict, list[str], list[str]]:
    """One summary row of ``x`` (shape (R, N_r)) without ``drift``: (row, failures, remarks)."""
    res, b, binned_wins = _errors(x, S, min_blocks, tau_exp)
    row = {c: getattr(res, c) for c in ("mean", "error", "tau_int", "tau_int_error", "window", "n_samples")}
    row.update(gamma_error=res.error, binned_error=b.error)
    failures = [res.note] if res.note else []
    remarks = []
    if res.tail:
        remarks.append(f"tau_int includes an exponential tail {res.tail:.3g} (tau_exp = {tau_exp:.4g}) beyond W = {res.window}")
    if binned_wins:
        ratio = b.error / res.error
        row["error"] = b.error
        row["tau_int"] = res.tau_int * ratio**2
        row["tau_int_error"] = 2.0 * row["tau_int"] * b.error_error / b.error
        remarks.append(
            f"binned error {ratio:.2f}x the Gamma method's ({b.n_blocks} blocks of {b.block_size}): rho(t) has "
            f"a slow tail beyond the window W = {res.window}, so error and tau_int are the binned ones"
        )
    n_per_chain = x.shape[1]
    if not failures and math.isfinite(row["tau_int"]) and n_per_chain < _MIN_LENGTH * row["tau_int"]:
        failures.append(
            f"chains too short: {n_per_chain} updates per chain, fewer than {_MIN_LENGTH:g} tau_int = "
            f"{_MIN_LENGTH * row['tau_int']:.0f}, so neither the error nor thermalization can be checked: run longer"
        )
    return row, failures, remarks


def _errors(x: np.ndarray, S: float, min_blocks: int, tau_exp: float | None) -> tuple[GammaResult, BinnedResult, bool]:
    """The Gamma method and binning of ``x`` (R, N_r), and whether the binned error wins: larger by more
    than ``_BINNED_WINS`` of its own standard errors."""
    res = gamma_method(x, S=S, tau_exp=tau_exp)
    b = binned_error(x, min_blocks=min_blocks)
    wins = bool(
        res.gamma.size
        and math.isfinite(res.error)
        and math.isfinite(b.error)
        and b.error - res.error > _BINNED_WINS * b.error_error
    )
    return res, b, wins


def _honest_error(x: np.ndarray, S: float, min_blocks: int, tau_exp: float | None = None) -> tuple[float, float]:
    """(mean, error) of ``x`` as :func:`summarize` finds them: Gamma method, or binning when larger."""
    res, b, binned_wins = _errors(x, S, min_blocks, tau_exp)
    return res.mean, (b.error if binned_wins else res.error)


def _drift(x: np.ndarray, S: float, min_blocks: int, tau_exp: float | None = None) -> float:
    """(mean of the second half - mean of the first half) / its error, for chains ``x`` (R, N_r).

    Halves of N_r // 2 samples each (the first sample left out when N_r is odd); nan when the
    halves are shorter than 2 samples or an error is undefined; 0 for equal constant halves and
    +-inf for unequal ones (the sampler moved the observable once and froze).
    """
    half = x.shape[1] // 2
    if half < 2:
        return math.nan
    first, second = x[:, -2 * half : -half], x[:, -half:]
    (m1, e1), (m2, e2) = (_honest_error(h, S, min_blocks, tau_exp) for h in (first, second))
    spread = math.hypot(e1, e2)
    if math.isnan(spread):
        return math.nan
    if spread == 0:
        return 0.0 if m1 == m2 else math.copysign(math.inf, m2 - m1)
    return (m2 - m1) / spread


def _heavy_tail(dh: pd.Series | np.ndarray, error: float, identity: str) -> str:
    """A note when <exp(-delta_H)> is biased low by its heavy tail by more than ``error``, else ''."""
    dh = np.asarray(dh, dtype=float)
    cut = math.log(dh.size)
    share = float(np.mean(dh > cut))
    if share == 0.0 or not share > error:
        return ""
    return (
        f"heavy tail: {share:.1%} of the updates have delta_H > ln N = {cut:.1f}; their mirror events "
        f"(delta_H < -{cut:.1f}) hold the same share of <exp(-delta_H)> but are e^{cut:.1f} times rarer, "
        f"expected less than once here, so this mean falls short of 1 by about {share:.2g} or more even for an exact "
        f"sampler: read {identity} instead"
    )


# --------------------------------------------------------------------------- helpers


def _check_min_blocks(min_blocks) -> None:
    if isinstance(min_blocks, bool) or not isinstance(min_blocks, (int, np.integer)) or min_blocks < 2:
        raise ValueError(f"min_blocks must be an integer >= 2, got {min_blocks!r}")


def _check_positive(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def _rho_error(rho: np.ndarray, t: int, n_total: int, lam: int) -> float:
    """Wolff's eq. (E.11): the error of rho(t), from rho(0..W_max) (shape (W_max + 1,)).

    drho(t)^2 = sum_{k=1}^{K} [rho(k + t) + rho(|k - t|) - 2 rho(t) rho(k)]^2 / N, K = min(W_max - t, t + lam).
    """
    w_max = len(rho) - 1
    k = np.arange(1, min(w_max - t, t + lam) + 1)
    if k.size == 0:
        return math.nan
    terms = rho[k + t] + rho[np.abs(k - t)] - 2.0 * rho[t] * rho[k]
    return math.sqrt(float(np.sum(terms**2)) / n_total)


def _exponential_tail(rho: np.ndarray, tau_exp: float, n_sigma: float, n_total: int) -> tuple[int, bool, float, float]:
    """(W_u, found, tail, tail_error) of the Schaefer-Sommer-Virotta tail correction.

    W_u is the first t >= 1 with rho(t) < n_sigma drho(t); the tail is tau_exp |rho(W_u + 1)| and
    its error tau_exp drho(W_u + 1). The search stops at W_max - 1 or 20 tau_exp + 100 (rho still
    significant there: no single-exponential tail to attach; found is False, W_u the last t tried).
    """
    w_max = len(rho) - 1
    lam = int(max(100, 3 * tau_exp))
    last = min(w_max - 1, int(20 * tau_exp) + 100)
    for t in range(1, last + 1):
        if rho[t] - n_sigma * _rho_error(rho, t, n_total, lam) < 0:
            return t, True, tau_exp * abs(float(rho[t + 1])), tau_exp * _rho_error(rho, t + 1, n_total, lam)
    return max(last, 1), False, 0.0, 0.0


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

"""Diagnostic figures of a run: what to look at before trusting its numbers.

:func:`write_figures` writes PNG files into a run folder from the table of
:meth:`lattice_flows.simulation.Simulation.run` (one row per chain and trajectory: columns
``chain``, ``trajectory``, ``accepted``, ``delta_H``, then one column per observable), optionally
with its :meth:`~lattice_flows.simulation.Simulation.summary`, the simulation's observables (for
exact values and distributions) and a flow's training history:

* ``histories.png``: every observable against Monte Carlo time, chain by chain (frozen topology,
  thermalization and drifts show here), with the exact value as a dashed line;
* ``histogram_<column>.png``: for integer-valued observables with an exact distribution (the
  topological charge of 2D U(1) with the Wilson action), the sampled frequencies against it;
* ``autocorrelation_<column>.png``: the normalised autocorrelation rho(t) of the topological charge
  (or the first observable) with the Gamma method's window and tau_int;
* ``training.png``: loss and ESS of the flow against training step;
* ``delta_H.png``: the distribution of the energy violation delta_H and <exp(-delta_H)>, which
  is 1 for a correct HMC.

Only matplotlib's object-oriented interface is used (``matplotlib.figure.Figure``, no pyplot), so
the global backend and any open pyplot figures are left alone, and matplotlib is imported only
when figures are written: without it this module imports, and :func:`write_figures` logs a warning
and writes nothing.
"""

from __future__ import annotations

import logging
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import analysis

__all__ = ["write_figures", "MAX_CHAINS_DRAWN"]

logger = logging.getLogger(__name__)

#: At most this many chains are drawn in ``histories.png`` (the first ones, by chain id).
MAX_CHAINS_DRAWN = 8

#: Columns of the run table that are bookkeeping or sampler diagnostics, not observables.
_NOT_OBSERVABLES = ("chain", "trajectory", "accepted", "delta_H")

#: Training histories longer than this get a running mean over the raw curve.
_RUNNING_MEAN_ABOVE = 50

_DPI = 100


def write_figures(
    out_dir,
    table: pd.DataFrame,
    *,
    summary: pd.DataFrame | None = None,
    observables: Mapping[str, Any] | None = None,
    history: pd.DataFrame | None = None,
) -> list[pathlib.Path]:
    """Write the diagnostic figures of a run into ``out_dir`` (created if missing) as PNG files.

    Args:
        out_dir: Folder to write into; existing files of the same names are replaced.
        table: The run table, one row per chain and trajectory (:meth:`Simulation.run`): columns
            ``chain``, ``trajectory``, ``accepted`` (bool), ``delta_H``, then one column per
            observable. Rows may come in any order. Without ``chain`` the table is one chain;
            without ``trajectory``, rows are in Monte Carlo order within each chain.
        summary: :meth:`Simulation.summary` of ``table`` (indexed by quantity; columns ``mean``,
            ``error``, ``exact``, ...), or None. Supplies the exact values drawn in the histories,
            ``<exp(-delta_H)>`` with its Gamma-method error, and ``<O^2>`` in histogram titles.
        observables: The simulation's ``{column: Observable}``, or None. Picks the observable
            columns (default: every numeric, non-bool column except ``chain``, ``trajectory``,
            ``delta_H``), and gives ``exact()`` and ``exact_distribution()``.
        history: Training history (:func:`lattice_flows.training.train_flow`: columns ``step``,
            ``loss``, ``ess``, ...), or None.

    Returns:
        The paths written, in the order: ``histories.png``, ``histogram_<column>.png`` (one per
        observable whose ``exact_distribution()`` is not empty), ``autocorrelation_<column>.png``,
        ``training.png``, ``delta_H.png``. A figure is left out when its data do not exist (no
        observable columns, no history rows, no ``delta_H`` column, fewer than 2 trajectories per
        chain for the autocorrelation). Column names are made safe for file names (characters
        other than letters, digits, ``.``, ``_``, ``-`` become ``_``).

    Without matplotlib a warning is logged and nothing is written (``[]``). A figure that fails
    for an unforeseen reason is logged with its traceback and skipped, so the others are still
    written. Constant columns, NaN or infinite values and a single chain are drawn as they are,
    with what could not be computed said in the figure.

    Raises:
        TypeError: If ``table`` is not a pandas DataFrame.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas.DataFrame, got {type(table).__name__}")
    try:
        # ``import matplotlib`` first: with matplotlib blocked (sys.modules["matplotlib"] = None)
        # an already imported matplotlib.figure would otherwise still be found.
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as exc:
        logger.warning("matplotlib is not available (%s): no figures written; install lattice-flows[plots]", exc)
        return []

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _RunData(table, summary, observables)
    written: list[pathlib.Path] = []
    used_names: set[str] = set()

    def save(fig, name: str) -> None:
        path = out / _unique(name, used_names)
        fig.savefig(path, dpi=_DPI)
        written.append(path)

    jobs: list[tuple[str, Any]] = [("histories.png", lambda: _histories(Figure, run))]
    for column in run.columns:
        dist = run.exact_distribution(column)
        if dist:
            jobs.append(
                (f"histogram_{_safe(column)}.png", lambda c=column, d=dist: _histogram(Figure, run, c, d))
            )
    if run.columns:
        column = "topological_charge" if "topological_charge" in run.columns else run.columns[0]
        jobs.append((f"autocorrelation_{_safe(column)}.png", lambda c=column: _autocorrelation(Figure, run, c)))
    jobs.append(("training.png", lambda: _training(Figure, history)))
    jobs.append(("delta_H.png", lambda: _delta_h(Figure, run)))

    for name, make in jobs:
        try:
            fig = make()
            if fig is not None:
                save(fig, name)
        except OSError as exc:  # a full disk (ENOSPC) or a lost folder: the job must fail, not report success
            from .checkpoint import write_error

            raise write_error(out / name, exc) from None
        except Exception:  # a failed figure must not lose the others (or the run that preceded them)
            logger.warning("could not write %s", out / name, exc_info=True)
    return written


# --------------------------------------------------------------------------------------------------
# the run's data


class _RunData:
    """The run table sorted by (chain, trajectory), with the observable columns and exact values."""

    def __init__(self, table: pd.DataFrame, summary: pd.DataFrame | None, observables: Mapping[str, Any] | None):
        table = table.copy()
        if "chain" not in table.columns:
            table["chain"] = 0
        if "trajectory" not in table.columns:
            table["trajectory"] = table.groupby("chain").cumcount()
        self.table = table.sort_values(["chain", "trajectory"], kind="stable")
        self.summary = summary
        self.observables = dict(observables) if observables is not None else None
        self.chains = list(pd.unique(self.table["chain"]))
        if self.observables is not None:
            candidates = [c for c in self.observables if c in table.columns]
        else:
            candidates = [c for c in table.columns if c not in _NOT_OBSERVABLES]
        # bool columns (acceptance flags) are not observables; object columns cannot be drawn
        self.columns = [
            c
            for c in candidates
            if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
        ]

    def values(self, column: str, chain) -> tuple[np.ndarray, np.ndarray]:
        """(trajectory, value) of one chain, values as float with non-finite ones as nan."""
        rows = self.table[self.table["chain"] == chain]
        y = rows[column].to_numpy(dtype=float)
        return rows["trajectory"].to_numpy(), np.where(np.isfinite(y), y, np.nan)

    def pivot(self, column: str) -> np.ndarray:
        """Values of ``column`` as float, shape (n_chains, n_per_chain); chains cut to the shortest."""
        groups = [g[column].to_numpy(dtype=float) for _, g in self.table.groupby("chain", sort=True)]
        n = min((len(g) for g in groups), default=0)
        return np.stack([g[:n] for g in groups]) if groups else np.empty((0, 0))

    def _observable(self, column: str):
        return None if self.observables is None else self.observables.get(column)

    def exact(self, label: str, column: str | None = None, power: int = 1) -> float | None:
        """Exact value of summary row ``label``, else ``observables[column].exact()[power]``."""
        if self.summary is not None and "exact" in self.summary.columns and label in self.summary.index:
            value = _finite(self.summary.at[label, "exact"])
            if value is not None:
                return value
        obs = self._observable(column or label)
        if obs is not None:
            return _finite(obs.exact().get(power))
        return None

    def exact_distribution(self, column: str) -> dict[int, float]:
        obs = self._observable(column)
        method = getattr(obs, "exact_distribution", None)
        return dict(method()) if method is not None else {}

    def summary_row(self, label: str) -> tuple[float, float] | None:
        """(mean, error) of summary row ``label`` when both are finite."""
        if self.summary is None or label not in self.summary.index:
            return None
        mean, error = _finite(self.summary.at[label, "mean"]), _finite(self.summary.at[label, "error"])
        return None if mean is None or error is None else (mean, error)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _safe(name: str) -> str:
    return re.sub(r"_+$", "", re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))) or "column"


def _unique(name: str, used: set[str]) -> str:
    stem, suffix = name.rsplit(".", 1)
    candidate, k = name, 2
    while candidate in used:
        candidate, k = f"{stem}_{k}.{suffix}", k + 1
    used.add(candidate)
    return candidate


def _is_integer_valued(y: np.ndarray) -> bool:
    finite = y[np.isfinite(y)]
    return finite.size > 0 and bool(np.all(finite == np.round(finite)))


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True, fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})


def _pm(mean: float, error: float) -> str:
    return f"{mean:.4g} ± {error:.2g}"


# --------------------------------------------------------------------------------------------------
# the figures; each returns a Figure, or None when its data do not exist


def _histories(Figure, run: _RunData):
    """``histories.png``: one panel per observable column, its value against trajectory for each of
    the first :data:`MAX_CHAINS_DRAWN` chains (steps for integer-valued observables), with the exact
    value (dashed) and the summary's mean ± error (band) where known."""
    if not run.columns or len(run.table) == 0:
        return None
    drawn = run.chains[:MAX_CHAINS_DRAWN]
    n = len(run.columns)
    fig = Figure(figsize=(10, 1.0 + 2.0 * n), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    n_rows = len(run.table) // max(len(run.chains), 1)
    marker = "." if n_rows <= 50 else None
    for ax, column in zip(axes, run.columns):
        integer = _is_integer_valued(run.table[column].to_numpy(dtype=float))
        notes = []
        for i, chain in enumerate(drawn):
            t, y = run.values(column, chain)
            ax.plot(t, y, lw=0.7, marker=marker, ms=3, color=f"C{i}", label=f"chain {chain}",
                    drawstyle="steps-post" if integer else "default")
            if np.isnan(y).any():
                notes.append(f"chain {chain}: {int(np.isnan(y).sum())} non-finite")
        stats = run.summary_row(column)
        if stats is not None:
            mean, error = stats
            ax.axhspan(mean - error, mean + error, color="0.5", alpha=0.3, lw=0, label=f"mean {_pm(mean, error)}")
        exact = run.exact(column)
        if exact is not None:
            ax.axhline(exact, color="k", ls="--", lw=1.2, label=f"exact {exact:.6g}")
        values = run.table[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size and np.all(finite == finite[0]):
            notes.append(f"constant: {finite[0]:.6g} in every trajectory")
        if notes:
            ax.text(0.01, 0.97, "; ".join(notes), transform=ax.transAxes, va="top", fontsize=8)
        ax.set_ylabel(column)
        # outside the axes, on the right, so no data are hidden; the chains only once, on top
        handles, labels = ax.get_legend_handles_labels()
        keep = [i for i, label in enumerate(labels) if ax is axes[0] or not label.startswith("chain ")]
        if keep:
            ax.legend([handles[i] for i in keep], [labels[i] for i in keep], fontsize=7,
                      loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    axes[-1].set_xlabel("trajectory (Monte Carlo time after thermalization)")
    shown = (
        f"all {len(run.chains)} chain{'s' if len(run.chains) != 1 else ''}"
        if len(drawn) == len(run.chains)
        else f"chains {', '.join(map(str, drawn))} of {len(run.chains)}"
    )
    fig.suptitle(f"Monte Carlo histories ({shown})")
    return fig


def _histogram(Figure, run: _RunData, column: str, dist: Mapping[int, float]):
    """``histogram_<column>.png``: the sampled frequency of each integer value (bars; error bars
    from the Gamma method applied to the indicator of that value, so autocorrelations count) and the
    exact probabilities P(value) as markers."""
    values = run.table[column].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    q = np.rint(finite).astype(np.int64)
    observed, counts = np.unique(q, return_counts=True)
    freq = counts / q.size
    n_used = finite.size
    errors = None
    x = run.pivot(column)
    if x.size and x.shape[1] >= 2 and np.all(np.isfinite(x)):
        # frequencies and errors from the same (equal-length) chains; the same values unless the
        # chains differ in length and were cut to the shortest
        xr = np.rint(x)
        errors = np.array([analysis.gamma_method(xr == v).error for v in observed])
        freq = np.array([np.mean(xr == v) for v in observed])
        n_used = xr.size

    p_max = max(dist.values())
    shown_exact = {k: p for k, p in dist.items() if p >= 1e-4 * p_max or k in set(observed.tolist())}
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(observed, freq, width=0.8, color="C0", alpha=0.6, label=f"sampled ({n_used} values)")
    if errors is not None:
        ax.errorbar(observed, freq, yerr=errors, fmt="none", ecolor="C0", capsize=3, label="error (Gamma method)")
    ax.plot(list(shown_exact), list(shown_exact.values()), "o", color="k", ms=5, mfc="none", mew=1.5, label="exact P")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(column)
    ax.set_ylabel("probability")
    title = f"{column}: sampled frequencies against the exact distribution"
    second = []
    stats = run.summary_row(f"{column}^2")
    if stats is not None:
        exact2 = sum(k * k * p for k, p in dist.items())
        second.append(f"<{column}^2> = {_pm(*stats)} (exact {exact2:.5g})")
    if finite.size < values.size:
        second.append(f"{values.size - finite.size} non-finite values left out")
    ax.set_title(title + ("\n" + "; ".join(second) if second else ""), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _autocorrelation(Figure, run: _RunData, column: str):
    """``autocorrelation_<column>.png``: the normalised autocorrelation rho(t) of ``column``, pooled
    over chains (:func:`lattice_flows.analysis.normalized_autocorrelation`, chains cut to the
    shortest, shape (n_chains, n_per_chain)), for t up to a few windows, with a vertical line at the
    Gamma method's window W and tau_int in the title. A constant or non-finite series gets a note
    instead of a curve."""
    x = run.pivot(column)
    if x.size == 0 or x.shape[1] < 2:
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_xlabel("Monte Carlo time t (trajectories)")
    ax.set_ylabel(r"$\rho(t) = \Gamma(t)\,/\,\Gamma(0)$")
    chains = f"{x.shape[0]} chain{'s' if x.shape[0] != 1 else ''} x {x.shape[1]} trajectories"
    if not np.all(np.isfinite(x)):
        ax.set_title(f"{column}: autocorrelation ({chains})", fontsize=10)
        _note(ax, f"{int((~np.isfinite(x)).sum())} non-finite values: rho(t) and tau_int are undefined")
        return fig
    res = analysis.gamma_method(x)
    if not res.gamma.size:  # constant series
        ax.set_title(f"{column}: autocorrelation ({chains})", fontsize=10)
        _note(ax, f"constant series ({x.flat[0]:.6g}): Gamma(0) = 0, so rho(t) and tau_int are undefined;\n"
                  "the sampler did not move this observable")
        return fig
    w_max = x.shape[1] // 2
    t_max = min(w_max, max(3 * res.window, 20))
    rho = analysis.normalized_autocorrelation(x, t_max)
    t = np.arange(t_max + 1)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.plot(t, rho, ".-", color="C0", lw=1, ms=4, label=r"$\rho(t)$")
    if res.tau_int > 0.5:
        ax.plot(t, np.exp(-t / res.tau_int), ":", color="C1", lw=1, label=r"$e^{-t/\tau_\mathrm{int}}$ (for scale)")
    ax.axvline(res.window, color="C3", ls="--", lw=1.2, label=f"window W = {res.window}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    title = f"{column}: tau_int = {_pm(res.tau_int, res.tau_int_error)} trajectories, W = {res.window} ({chains})"
    if not res.reliable:
        title += "\n" + ("window did not close: tau_int is probably underestimated; run longer chains"
                         if res.window >= w_max else res.note)
    ax.set_title(title, fontsize=9)
    return fig


def _running_mean(y: pd.Series, n: int) -> pd.Series:
    """Trailing mean over ``n`` entries (fewer at the start), NaN entries left out."""
    return y.rolling(n, min_periods=1).mean()


def _training(Figure, history: pd.DataFrame | None):
    """``training.png``: reverse-KL loss (top) and effective sample size (bottom) against training
    step, sharing the x axis; raw per-step values, plus a trailing running mean when there are more
    than 50 steps. Non-finite (skipped) steps are gaps."""
    if history is None or len(history) == 0:
        return None
    panels = [c for c in ("loss", "ess") if c in history.columns]
    if not panels:
        return None
    step = history["step"].to_numpy() if "step" in history.columns else np.arange(len(history))
    n = len(history)
    window = max(5, n // 50) if n > _RUNNING_MEAN_ABOVE else 0
    fig = Figure(figsize=(8, 2.5 + 2.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    labels = {"loss": "loss  mean(log q + S)", "ess": "ESS"}
    for ax, column in zip(axes, panels):
        y = pd.Series(pd.to_numeric(history[column], errors="coerce").to_numpy(dtype=float))
        y[~np.isfinite(y)] = np.nan
        ax.plot(step, y, lw=0.6, color="C0", alpha=0.4 if window else 1.0, marker="." if n <= 50 else None,
                label="per step")
        if window:
            ax.plot(step, _running_mean(y, window), lw=1.5, color="C1", label=f"running mean ({window} steps)")
            ax.legend(fontsize=8)
        if column == "ess":
            ax.set_ylim(0.0, 1.05)
        ax.set_ylabel(labels[column])
    axes[-1].set_xlabel("training step")
    title = f"flow training: {n} steps"
    if "seconds" in history.columns and _finite(history["seconds"].iloc[-1]) is not None:
        title += f", {float(history['seconds'].iloc[-1]):.0f} s"
    if "ess" in history.columns:
        tail = pd.to_numeric(history["ess"], errors="coerce").iloc[-max(window, 1):]
        last = _finite(tail.mean())
        if last is not None:
            title += f", final ESS {last:.3g}"
    if "skipped" in history.columns:
        skipped = int(history["skipped"].astype(bool).sum())
        if skipped:
            title += f", {skipped} skipped (non-finite) steps"
    fig.suptitle(title)
    return fig


def _delta_h(Figure, run: _RunData):
    """``delta_H.png``: histogram of the energy violation delta_H over all chains and trajectories
    (log y axis), with <exp(-delta_H)> (exactly 1 for a correct, reversible, area-preserving
    integrator) and the acceptance rate in the title. Non-finite delta_H are counted and left out."""
    if "delta_H" not in run.table.columns or len(run.table) == 0:
        return None
    dh = pd.to_numeric(run.table["delta_H"], errors="coerce").to_numpy(dtype=float)
    finite = dh[np.isfinite(dh)]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_xlabel(r"$\Delta H$")
    ax.set_ylabel("count")
    stats = run.summary_row("exp(-delta_H)")
    if stats is not None:
        mean_exp = f"<exp(-ΔH)> = {_pm(*stats)}"
    elif finite.size:
        e = np.exp(-finite)
        err = e.std(ddof=1) / math.sqrt(e.size) if e.size > 1 else math.nan
        mean_exp = f"<exp(-ΔH)> = {_pm(float(e.mean()), err)} (error without autocorrelation)"
    else:
        mean_exp = "<exp(-ΔH)> undefined"
    parts = [f"{finite.size} trajectories"]
    if "accepted" in run.table.columns:
        parts.append(f"acceptance {run.table['accepted'].astype(float).mean():.3f}")
    if finite.size < dh.size:
        parts.append(f"{dh.size - finite.size} non-finite ΔH left out")
    if finite.size:
        if np.all(finite == 0):
            parts.append("ΔH = 0 throughout (no Hamiltonian)")
        bins = int(min(60, max(10, math.sqrt(finite.size))))
        ax.hist(finite, bins=bins, color="C0", alpha=0.8)
        ax.set_yscale("log")
        ax.axvline(0.0, color="k", lw=0.8)
    else:
        _note(ax, "no finite ΔH")
    ax.set_title(f"{mean_exp}\n{', '.join(parts)}", fontsize=10)
    return fig

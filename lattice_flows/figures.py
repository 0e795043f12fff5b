"""Diagnostic figures of a run: what to look at before trusting its numbers.

:func:`write_figures` writes PNG files into a run folder from the table of
:meth:`lattice_flows.simulation.Simulation.run` (one row per chain and trajectory: columns
``chain``, ``trajectory``, ``accepted``, ``delta_H``, then one column per observable), optionally
with its :meth:`~lattice_flows.simulation.Simulation.summary`, the simulation's observables (for
exact values and distributions) and a flow's training history:

* ``histories.png``: every observable against Monte Carlo time (frozen topology, thermalization
  and drifts show here), with the exact value as a dashed line. Short chains (fewer than
  ``10 * MIN_BLOCK`` = 100 trajectories) are drawn value by value, chain by chain; longer ones in two
  panels per observable, so that the figure reads the same from 1 chain x 50 trajectories to 64
  chains x 10^5: the first chain's values (every k-th, at most :data:`MAX_POINTS_DRAWN` points) and,
  on the right, the means of blocks of ``max(MIN_BLOCK, n // BLOCKS)`` consecutive trajectories,
  per chain (the first :data:`MAX_CHAINS_DRAWN`) and over all chains;
* ``histogram_<column>.png``: for integer-valued observables with an exact distribution (the
  topological charge of 2D U(1) with the Wilson action), the sampled frequencies against it;
* ``autocorrelation_<column>.png``: the normalised autocorrelation rho(t) of the topological charge
  (or the first observable) with the Gamma method's window and tau_int;
* ``training.png``: loss and ESS of the flow against training step, with the smoothed
  end-of-training ESS that the CLI logs (:func:`lattice_flows.training.smoothed_history`); the loss
  axis is scaled to the values after the first few percent of the steps, so the first transient does
  not flatten the rest; a flow trained on another lattice than the run samples says so in the title;
* ``delta_H.png``: the distribution of the energy violation delta_H and <exp(-delta_H)>, which
  is 1 for a correct HMC.

Every figure is written atomically (:func:`lattice_flows.checkpoint.write_atomic`): a failure
leaves the previous file or none, never a part. Only matplotlib's object-oriented interface is used (``matplotlib.figure.Figure``, no pyplot), so
the global backend and any open pyplot figures are left alone, and matplotlib is imported only
when figures are written: without it this module imports, and :func:`write_figures` logs a warning
and writes nothing.
"""

from __future__ import annotations

import logging
import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import analysis
from .checkpoint import WriteError, write_atomic
from .flow_report import ess_text, lattice_text
from .analysis import EXP_DELTA_H
from .run_summary import exact_values, moment_label
from .run_table import ACCEPTED, CHAIN, DELTA_H, RESERVED_COLUMNS, TRAJECTORY
from .training import smoothed_history, smoothing_window

__all__ = ["write_figures", "MAX_CHAINS_DRAWN", "MAX_POINTS_DRAWN", "BLOCKS", "MIN_BLOCK"]

logger = logging.getLogger(__name__)

#: At most this many chains are drawn in ``histories.png`` (the first ones, by chain id).
MAX_CHAINS_DRAWN = 8

#: ``histories.png`` draws longer chains as the means of at most ``BLOCKS`` blocks of consecutive
#: trajectories (per chain, and over all chains), beside the first chain's values.
BLOCKS = 50

#: The shortest block of ``histories.png``: chains of fewer than ``10 * MIN_BLOCK`` trajectories are
#: drawn value by value.
MIN_BLOCK = 10

#: At most this many values of the first chain are drawn per panel of ``histories.png`` (every k-th).
MAX_POINTS_DRAWN = 1000

#: The loss axis of ``training.png`` is scaled to the steps after this fraction of the history.
TRANSIENT_FRACTION = 0.05

#: Columns of the run table that are bookkeeping or sampler diagnostics, not observables.

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
    lattice_shape: Sequence[int] | None = None,
    training_lattice: Sequence[int] | None = None,
    flow_ess: Mapping[str, Any] | None = None,
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
        lattice_shape: The lattice this run samples, e.g. ``(16, 16)``, or None (unknown).
        training_lattice: The lattice the flow of ``history`` was trained on, or None: then
            ``history.attrs["lattice_shape"]`` (set by :meth:`Simulation.load`) if there, else
            ``lattice_shape``. When it differs from ``lattice_shape``, ``training.png`` says
            "trained on 8x8 (this run samples 16x16)".
        flow_ess: The flow's ESS on the sampled lattice from fresh samples, ``{"ess": float,
            "n_samples": int}`` (what the CLI writes to ``status.json`` as ``flow_ess`` and
            ``flow_ess_samples``), or None; quoted in ``training.png``'s title.

    Returns:
        The paths written, in the order: ``histories.png``, ``histogram_<column>.png`` (one per
        observable whose ``exact_distribution()`` is not empty), ``autocorrelation_<column>.png``,
        ``training.png``, ``delta_H.png``. A figure is left out when its data do not exist (no
        observable columns, no history rows, no ``delta_H`` column, fewer than 2 trajectories per
        chain for the autocorrelation). Column names are made safe for file names (characters
        other than letters, digits, ``.``, ``_``, ``-`` become ``_``).

    Without matplotlib a warning is logged and nothing is written (``[]``). A figure that fails
    while it is drawn (any exception but :class:`OSError`: a plotting bug, data it cannot show) is
    logged with its traceback and skipped, so the others are still written. Constant columns, NaN
    or infinite values and a single chain are drawn as they are, with what could not be computed
    said in the figure. Each file is written atomically, so a failed write leaves the previous
    file (or none), never a part of one.

    Raises:
        TypeError: If ``table`` is not a pandas DataFrame.
        OSError: If a figure cannot be written (a full disk, a read-only folder): the other
            figures are still tried, then the first such error is raised, naming every figure
            that was not written (the CLI then exits with status 2).
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
    if training_lattice is None and history is not None:
        training_lattice = history.attrs.get("lattice_shape")
    if training_lattice is None:
        training_lattice = lattice_shape
    written: list[pathlib.Path] = []
    not_written: list[tuple[pathlib.Path, OSError]] = []
    used_names: set[str] = set()

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
    jobs.append(
        ("training.png", lambda: _training(Figure, history, lattice_shape=lattice_shape,
                                           training_lattice=training_lattice, flow_ess=flow_ess))
    )
    jobs.append(("delta_H.png", lambda: _delta_h(Figure, run)))

    for name, make in jobs:
        path = out / name
        try:
            fig = make()
            if fig is None:
                continue
            path = out / _unique(name, used_names)
            # format given: the temporary file's suffix is not .png
            write_atomic(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=_DPI))
        except OSError as exc:  # the disk, not the figure: tell the caller, after trying the others
            logger.error("could not write %s: %s", path, exc)
            not_written.append((path, exc))
            continue
        except Exception:  # a failed figure must not lose the others (or the run that preceded them)
            logger.warning("could not draw %s", path, exc_info=True)
            continue
        written.append(path)
    if not_written:
        _, first = not_written[0]
        names = ", ".join(p.name for p, _ in not_written)
        reason = first.strerror or str(first)
        raise WriteError(
            f"{out}: could not write {len(not_written)} figure(s) ({names}): {reason}", first.errno, str(out)
        ) from first
    return written


# --------------------------------------------------------------------------------------------------
# the run's data


class _RunData:
    """The run table sorted by (chain, trajectory), with the observable columns and exact values."""

    def __init__(self, table: pd.DataFrame, summary: pd.DataFrame | None, observables: Mapping[str, Any] | None):
        table = table.copy()
        if CHAIN not in table.columns:
            table[CHAIN] = 0
        if TRAJECTORY not in table.columns:
            table[TRAJECTORY] = table.groupby(CHAIN).cumcount()
        self.table = table.sort_values([CHAIN, TRAJECTORY], kind="stable")
        self.summary = summary
        self.observables = dict(observables) if observables is not None else None
        self.chains = list(pd.unique(self.table[CHAIN]))
        if self.observables is not None:
            candidates = [c for c in self.observables if c in table.columns]
        else:
            candidates = [c for c in table.columns if c not in RESERVED_COLUMNS]
        # bool columns (acceptance flags) are not observables; object columns cannot be drawn
        self.columns = [
            c
            for c in candidates
            if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
        ]

    def values(self, column: str, chain) -> tuple[np.ndarray, np.ndarray]:
        """(trajectory, value) of one chain, values as float with non-finite ones as nan."""
        rows = self.table[self.table[CHAIN] == chain]
        y = rows[column].to_numpy(dtype=float)
        return rows[TRAJECTORY].to_numpy(), np.where(np.isfinite(y), y, np.nan)

    def pivot(self, column: str) -> np.ndarray:
        """Values of ``column`` as float, shape (n_chains, n_per_chain); chains cut to the shortest."""
        groups = [g[column].to_numpy(dtype=float) for _, g in self.table.groupby(CHAIN, sort=True)]
        n = min((len(g) for g in groups), default=0)
        return np.stack([g[:n] for g in groups]) if groups else np.empty((0, 0))

    def _observable(self, column: str):
        return None if self.observables is None else self.observables.get(column)

    def exact(self, label: str, column: str | None = None, power: int = 1) -> float | None:
        """Exact value of summary row ``label``, else ``observables[column]``'s ``<O^power>``
        (:func:`lattice_flows.run_summary.exact_values`)."""
        if self.summary is not None and "exact" in self.summary.columns and label in self.summary.index:
            value = _finite(self.summary.at[label, "exact"])
            if value is not None:
                return value
        column = column or label
        obs = self._observable(column)
        if obs is not None:
            return _finite(exact_values({column: obs}).get(moment_label(column, power)))
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
    """``histories.png``: one row of panels per observable column against trajectory.

    Chains shorter than ``10 * MIN_BLOCK`` trajectories: one panel, the values of each of the first
    :data:`MAX_CHAINS_DRAWN` chains (steps for integer-valued observables, markers up to 50
    trajectories). Longer chains: on the left the first chain's values, every k-th trajectory so that
    at most :data:`MAX_POINTS_DRAWN` are drawn; on the right the mean of each block of
    ``max(MIN_BLOCK, n // BLOCKS)`` consecutive trajectories, per chain for the first chains (thin) and over all
    chains (black), where a drift, a slow thermalization or a frozen charge shows as a trend or a
    flat line that the noise of single values hides. Both carry the exact value (dashed) and the
    summary's mean ± error (grey band) where known; integer-valued observables get integer ticks."""
    if not run.columns or len(run.table) == 0:
        return None
    from matplotlib.ticker import MaxNLocator

    drawn = run.chains[:MAX_CHAINS_DRAWN]
    n_max = int(run.table.groupby(CHAIN).size().max())
    # blocks of at least MIN_BLOCK trajectories, at most BLOCKS of them; none for short chains
    blocked = n_max >= 10 * MIN_BLOCK
    block = max(MIN_BLOCK, n_max // BLOCKS)
    n = len(run.columns)
    fig = Figure(figsize=(13 if blocked else 10, 1.2 + 2.1 * n), layout="constrained")
    axes = fig.subplots(n, 2 if blocked else 1, sharex=True, squeeze=False)
    t0 = run.table[TRAJECTORY].min()
    if blocked:
        # block index of each row; the last, shorter block is merged into the one before it
        block_id = np.minimum((run.table[TRAJECTORY] - t0).to_numpy() // block, max(n_max // block - 1, 0))
        # the block means of every observable at once (non-finite values left out), per drawn chain and overall
        frame = pd.DataFrame({"__chain": run.table[CHAIN].to_numpy(), "__block": block_id,
                              "__t": run.table[TRAJECTORY].to_numpy(dtype=float)})
        for column in run.columns:
            values = run.table[column].to_numpy(dtype=float)
            frame[column] = np.where(np.isfinite(values), values, np.nan)
        per_chain = frame[frame["__chain"].isin(drawn)].groupby(["__chain", "__block"], sort=True).mean()
        overall = frame.drop(columns="__chain").groupby("__block", sort=True).mean()
        # chain drawn[0]'s values, 1 in `every` of them
        every = max(1, math.ceil(int((run.table[CHAIN] == drawn[0]).sum()) / MAX_POINTS_DRAWN))
    for row, column in enumerate(run.columns):
        ax = axes[row, 0]
        values = run.table[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        integer = _is_integer_valued(values)
        notes = []
        bad = run.table.loc[~np.isfinite(values), CHAIN].value_counts(sort=False)
        notes += [f"chain {chain}: {int(k)} non-finite" for chain, k in bad.items() if chain in set(drawn)]
        if finite.size and np.all(finite == finite[0]):
            notes.append(f"constant: {finite[0]:.6g} in every trajectory")
        if blocked:
            chain = drawn[0]
            t, y = run.values(column, chain)
            ax.plot(t[::every], y[::every], lw=0.6, color="C0", drawstyle="steps-post" if integer else "default")
        else:
            marker = "." if n_max <= 50 else None
            for i, chain in enumerate(drawn):
                t, y = run.values(column, chain)
                ax.plot(t, y, lw=0.7, marker=marker, ms=3, color=f"C{i}", label=f"chain {chain}",
                        drawstyle="steps-post" if integer else "default")
        panels = [ax]
        if blocked:
            bx = axes[row, 1]
            panels.append(bx)
            for i, chain in enumerate(drawn):
                if chain in per_chain.index.get_level_values(0):
                    part = per_chain.loc[chain]
                    bx.plot(part["__t"], part[column], ".-", lw=0.7, ms=2.5, color=f"C{i}", alpha=0.6, label=f"chain {chain}")
            label = f"all {len(run.chains)} chains" if len(run.chains) > 1 else "the chain"
            bx.plot(overall["__t"], overall[column], "-", lw=2.0, color="k", label=label)
        stats = run.summary_row(column)
        exact = run.exact(column)
        for p in panels:
            if stats is not None:
                mean, error = stats
                p.axhspan(mean - error, mean + error, color="0.5", alpha=0.35, lw=0,
                          label=f"mean {_pm(mean, error)}" if p is panels[-1] else None)
            if exact is not None:
                p.axhline(exact, color="k", ls="--", lw=1.2, label=f"exact {exact:.6g}" if p is panels[-1] else None)
        if integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if notes:
            ax.text(0.01, 0.97, "; ".join(notes), transform=ax.transAxes, va="top", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
        ax.set_ylabel(column)
        if blocked:
            panels[-1].set_ylabel(f"block mean of\n{column}")
        # outside the axes, on the right, so no data are hidden; the chains only once, on top
        last = panels[-1]
        handles, labels = [], []
        for p in panels:
            h, l = p.get_legend_handles_labels()
            handles += h
            labels += l
        keep = [i for i, lab in enumerate(labels) if row == 0 or not lab.startswith(("chain ", "all ", "the chain"))]
        if keep:
            last.legend([handles[i] for i in keep], [labels[i] for i in keep], fontsize=7,
                        loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    for ax in axes[-1]:
        ax.set_xlabel("trajectory (after thermalization)")
    n_chains = len(run.chains)
    if len(drawn) == n_chains:
        shown = f"{n_chains} chain{'s' if n_chains != 1 else ''}"
    else:
        shown = f"chains {', '.join(map(str, drawn))} of {n_chains}"
    if blocked:
        axes[0, 0].set_title(f"values of chain {drawn[0]}" + (f" (1 in {every} trajectories)" if every > 1 else ""),
                             fontsize=10)
        black = "their mean" if len(drawn) == n_chains else f"mean of all {n_chains}"
        axes[0, 1].set_title(f"means of blocks of {block} trajectories ({shown}; black: {black})"
                             if n_chains > 1 else f"means of blocks of {block} trajectories", fontsize=10)
        fig.suptitle(f"Monte Carlo histories: {n_chains} chain{'s' if n_chains != 1 else ''} x {n_max} trajectories")
    else:
        fig.suptitle(f"Monte Carlo histories ({shown}, {n_max} trajectories each)")
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
    ax.set_ylabel(f"P({column})")
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


def _robust_limits(y: np.ndarray, skip: int) -> tuple[float, float] | None:
    """y-limits that hold the values after the first ``skip`` ones, but for the 1% at either end."""
    body = y[skip:]
    body = body[np.isfinite(body)]
    if body.size < 2:
        return None
    lo, hi = np.quantile(body, [0.01, 0.99])
    pad = 0.15 * (hi - lo) or 0.1 * abs(hi) or 1.0
    return float(lo - pad), float(hi + pad)


def _training(
    Figure,
    history: pd.DataFrame | None,
    *,
    lattice_shape: Sequence[int] | None = None,
    training_lattice: Sequence[int] | None = None,
    flow_ess: Mapping[str, Any] | None = None,
):
    """``training.png``: reverse-KL loss (top) and effective sample size per batch (bottom)
    against training step, sharing the x axis; raw per-step values, plus a trailing running mean
    over :func:`~lattice_flows.training.smoothing_window` steps when there are more than 50 steps,
    and the smoothed end-of-training value (:func:`~lattice_flows.training.smoothed_history`, the
    figure the CLI logs) as a red segment over the steps it averages. The loss axis holds the values
    after the first :data:`TRANSIENT_FRACTION` of the steps (1% quantiles at either end); when the
    first transient runs off that scale its steps are shaded. Non-finite (skipped) steps are gaps.
    The title names the training lattice, and says so when the run samples another one."""
    if history is None or len(history) == 0:
        return None
    panels = [c for c in ("loss", "ess") if c in history.columns]
    if not panels:
        return None
    step = history["step"].to_numpy() if "step" in history.columns else np.arange(len(history))
    n = len(history)
    window = smoothing_window(n)
    running = n > _RUNNING_MEAN_ABOVE
    skip = math.ceil(TRANSIENT_FRACTION * n) if n >= 20 else 0
    fig = Figure(figsize=(8, 2.8 + 2.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    labels = {"loss": "loss  mean(log q + S)\n(KL(q||p) - log Z)", "ess": "ESS of the batch\n(fraction of batch size)"}
    ends = {}
    for ax, column in zip(axes, panels):
        y = pd.Series(pd.to_numeric(history[column], errors="coerce").to_numpy(dtype=float))
        y[~np.isfinite(y)] = np.nan
        ax.plot(step, y, lw=0.6, color="C0", alpha=0.4 if running else 1.0, marker="." if n <= 50 else None,
                label="per step")
        if running:
            ax.plot(step, _running_mean(y, window), lw=1.5, color="C1", label=f"running mean ({window} steps)")
        end = smoothed_history(history, column)
        ends[column] = end
        if math.isfinite(end.value):
            ax.hlines(end.value, step[n - end.n_steps], step[-1], color="C3", lw=2.5, zorder=3,
                      label=f"{end.label}: " + (ess_text(end.value) if column == "ess" else f"{end.value:.5g}"))
        if column == "ess":
            ax.set_ylim(0.0, 1.05)
        elif n >= 20:  # shorter histories: matplotlib's own limits, every value shown
            limits = _robust_limits(y.to_numpy(), skip)
            if limits is not None:
                values = y.to_numpy()
                off = np.isfinite(values) & ((values < limits[0]) | (values > limits[1]))
                if off.any():
                    ax.set_ylim(*limits)
                    # the transient: up to the first run of in-range values (at most half the steps)
                    run = max(5, n // 100)
                    settled = np.convolve((~off).astype(float), np.ones(run), "valid") >= run
                    settle = int(np.argmax(settled)) if settled.any() else n
                    settle = settle if 0 < settle <= n // 2 else 0
                    if settle:
                        ax.axvspan(step[0], step[settle - 1], color="0.85", lw=0, zorder=0,
                                   label=f"first {settle} steps: transient, off scale")
                    if off[settle:].any():
                        ax.text(0.99, 0.97, f"{int(off[settle:].sum())} later value(s) off scale", ha="right",
                                va="top", transform=ax.transAxes, fontsize=8)
        ax.set_ylabel(labels[column])
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("training step")
    where = f" on {lattice_text(training_lattice)}" if training_lattice is not None else ""
    title = f"flow training{where}: {n} steps"
    if "seconds" in history.columns and _finite(history["seconds"].iloc[-1]) is not None:
        title += f", {float(history['seconds'].iloc[-1]):.0f} s"
    if "skipped" in history.columns:
        skipped = int(history["skipped"].astype(bool).sum())
        if skipped:
            title += f", {skipped} skipped (non-finite) steps"
    lines = [title]
    end = ends.get("ess")
    if end is not None and math.isfinite(end.value):
        lines.append(f"end of training: ESS {ess_text(end.value)} ({end.label})")
    other = (
        training_lattice is not None
        and lattice_shape is not None
        and [int(v) for v in training_lattice] != [int(v) for v in lattice_shape]
    )
    quality = ""
    if flow_ess is not None and _finite(flow_ess.get("ess")) is not None:
        on = f" on {lattice_text(lattice_shape)}" if lattice_shape is not None else ""
        quality = f"ESS{on} {ess_text(float(flow_ess['ess']))} from {int(flow_ess.get('n_samples', 0))} fresh samples"
    if other:
        lines.append(f"trained on {lattice_text(training_lattice)} (this run samples {lattice_text(lattice_shape)})"
                     + (f": {quality}" if quality else ""))
    elif quality:
        lines.append(f"this run: {quality}")
    fig.suptitle("\n".join(lines), color="C3" if other else "k")
    return fig


def _delta_h(Figure, run: _RunData):
    """``delta_H.png``: histogram of the energy violation delta_H over all chains and trajectories
    (log y axis), with <exp(-delta_H)> (exactly 1 for a correct, reversible, area-preserving
    integrator) and the acceptance rate in the title. Non-finite delta_H are counted and left out."""
    if DELTA_H not in run.table.columns or len(run.table) == 0:
        return None
    dh = pd.to_numeric(run.table[DELTA_H], errors="coerce").to_numpy(dtype=float)
    finite = dh[np.isfinite(dh)]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_xlabel(r"$\Delta H = H(\mathrm{proposal}) - H(\mathrm{current})$")
    ax.set_ylabel("trajectories per bin")
    stats = run.summary_row(EXP_DELTA_H)
    if stats is not None:
        mean_exp = f"<exp(-ΔH)> = {_pm(*stats)}"
    elif finite.size:
        e = np.exp(-finite)
        err = e.std(ddof=1) / math.sqrt(e.size) if e.size > 1 else math.nan
        mean_exp = f"<exp(-ΔH)> = {_pm(float(e.mean()), err)} (error without autocorrelation)"
    else:
        mean_exp = "<exp(-ΔH)> undefined"
    parts = [f"{finite.size} trajectories"]
    if ACCEPTED in run.table.columns:
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

"""The summary of a run's table, and the exact values it is compared with.

:func:`exact_values` is the one look-up of exact expectation values by summary row: an observable's
``<O^p>`` from :meth:`Observable.exact` (row ``column`` for ``p = 1``, ``column^p`` otherwise) and the
identities every exact sampler satisfies (``exp(-delta_H)`` and ``delta_H_identity(K=...)``: 1). The
summary and the figures both read it. :func:`summarize_run` is :func:`lattice_flows.analysis.summarize`
of the table with the observables' moments, the rows observable classes derive from several columns
(:meth:`Observable.summary_rows`: the core knows no theory, the plugin computes them), plus the columns
``exact`` and ``pull``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from . import analysis
from .analysis import EXP_DELTA_H
from .base import Observable
from .run_table import DELTA_H

__all__ = ["moment_label", "exact_values", "class_rows", "summarize_run"]

#: The prefix of the summary rows of the energy identity ``delta_H_identity(K=2)``; exactly 1 for every exact sampler.
DELTA_H_IDENTITY = f"{DELTA_H}_identity("


def moment_label(column: str, power: int) -> str:
    """The summary row of ``<column^power>``.

    >>> moment_label("plaquette", 1), moment_label("topological_charge", 2)
    ('plaquette', 'topological_charge^2')
    """
    return column if power == 1 else f"{column}^{power}"


def exact_values(observables: Mapping[str, Observable], rows: Iterable[str] = ()) -> dict[str, float]:
    """The exact value of every summary row that has one: ``moment_label(column, p)`` for every power ``p`` an
    observable's :meth:`~lattice_flows.Observable.exact` gives, and those of ``rows`` that are an exact sampler's
    identity (``exp(-delta_H)``, ``delta_H_identity(K=...)``: 1)."""
    exact: dict[str, float] = {}
    for column, obs in observables.items():
        for power, value in obs.exact().items():
            exact[moment_label(column, power)] = value
    for row in rows:
        if row == EXP_DELTA_H:
            exact[row] = 1.0  # holds for every exact sampler with a Hamiltonian (and trivially without)
        elif row.startswith(DELTA_H_IDENTITY):
            exact[row] = 1.0  # <e^-dH 1[dH >= -K]> + P(dH > K) = 1 for every exact sampler
    return exact


def class_rows(table: pd.DataFrame, observables: Mapping[str, Observable]) -> pd.DataFrame | None:
    """The summary rows that observable classes derive from several of their columns together
    (:meth:`Observable.summary_rows`, e.g. an effective mass from a correlator's ``t`` columns), in the order
    the classes first appear among the columns; ``None`` when none gives any. A row whose name is already a
    column of the table, or given twice, raises ``ValueError``."""
    by_class: dict[type, dict[str, Observable]] = {}
    for column, obs in observables.items():
        if column in table.columns:
            by_class.setdefault(type(obs), {})[column] = obs
    frames = []
    for cls, columns in by_class.items():
        rows = cls.summary_rows(table, columns)
        if rows is None or not len(rows):
            continue
        clash = [r for r in rows.index if r in table.columns or any(r in f.index for f in frames)]
        if clash:
            raise ValueError(f"{cls.__name__}.summary_rows: row {clash[0]!r} is already a column or a row of the summary")
        frames.append(rows)
    return pd.concat(frames) if frames else None


def summarize_run(
    table: pd.DataFrame, observables: Mapping[str, Observable], *, tau_exp: float | str | None = None
) -> pd.DataFrame:
    """:func:`lattice_flows.analysis.summarize` of ``table`` with the higher moments the observables ask for
    (``topological_charge^2``), then the rows their classes derive from several columns (:func:`class_rows`),
    plus ``exact`` (:func:`exact_values`) and ``pull`` (``(mean - exact) / error``)."""
    derived: dict[str, Callable[[pd.DataFrame], Any]] = {}
    for column, obs in observables.items():
        for power in obs.moments:
            if power != 1:
                derived[moment_label(column, power)] = lambda t, c=column, p=power: t[c].astype(float) ** p
    result = analysis.summarize(table, derived=derived, tau_exp=tau_exp)
    extra = class_rows(table, observables)
    if extra is not None:
        extra = extra.reindex(columns=result.columns)
        extra[["window", "n_samples"]] = extra[["window", "n_samples"]].fillna(0)  # no Gamma-method window
        result = pd.concat([result, extra.astype({"window": int, "n_samples": int, "reliable": bool})])
        result.index.name = "observable"
        result = result.astype({"window": int, "n_samples": int, "reliable": bool})
    exact = exact_values(observables, result.index)
    result["exact"] = pd.Series(exact, dtype=float).reindex(result.index)
    result["pull"] = (result["mean"] - result["exact"]) / result["error"]
    return result

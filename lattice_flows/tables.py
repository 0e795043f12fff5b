"""Tables of several runs side by side: :func:`concat_runs` joins them with a column per spec parameter.

Every table from :meth:`lattice_flows.Simulation.run` carries its whole resolved spec in
``table.attrs["spec"]`` (and the sampler as tuned in ``table.attrs["sampler"]``);
:meth:`lattice_flows.rundir.RunFolder.read_table` gives them back from a run folder (from the Parquet
file's metadata, or from ``spec.json``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .errors import LatticeFlowsError

__all__ = ["concat_runs", "spec_value", "spec_leaves"]


def spec_leaves(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value of a spec under its dotted path (``{"action.beta": 2.0, "lattice.shape": [8, 8], ...}``);
    lists (a lattice shape, the observables) are single values.

    >>> spec_leaves({"action": {"name": "u1_wilson", "beta": 2.0}, "seed": 1})
    {'action.name': 'u1_wilson', 'action.beta': 2.0, 'seed': 1}
    """
    leaves: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(spec_leaves(value, path + "."))
        else:
            leaves[path] = value
    return leaves


def spec_value(spec: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a spec (``"action.beta"``); ``KeyError`` naming what is there."""
    node: Any = spec
    walked = []
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            where = ".".join(walked) or "the spec"
            options = ", ".join(map(str, node)) if isinstance(node, Mapping) else f"a value, {node!r}"
            raise KeyError(f"{path!r}: {where} has no key {key!r} (it holds {options})")
        node = node[key]
        walked.append(key)
    return node


def _cell(value: Any) -> Any:
    """A spec value as a table cell: lists become tuples (hashable, so columns can be grouped by)."""
    if isinstance(value, list):
        return tuple(_cell(v) for v in value)
    return value


def concat_runs(tables: Iterable[pd.DataFrame], parameters: Sequence[str] | None = None) -> pd.DataFrame:
    """One table of several runs, with a column per spec parameter taken from each table's ``attrs["spec"]``.

    ``parameters``: dotted spec paths (``"action.beta"``, ``"lattice.shape"``, ``"sampler.name"``); the
    column is named by the path, and list values (a shape) become tuples. Default: every parameter
    whose value is not the same in all tables, ``None`` where a spec does not have it (an HMC run beside a
    flow run: ``flow.name`` is ``None`` for the HMC rows). The parameter columns come first, then the tables'
    own columns; rows keep their order, table after table, with a fresh index. The result's
    ``attrs["specs"]`` lists the tables' specs. Raises :class:`~lattice_flows.errors.LatticeFlowsError`
    for a table without a spec, a parameter that a spec does not have, or a parameter that is
    already a column.

    >>> import pandas as pd
    >>> def run(beta, shape, plaquettes):
    ...     table = pd.DataFrame({"chain": 0, "trajectory": range(len(plaquettes)), "plaquette": plaquettes})
    ...     table.attrs["spec"] = {"lattice": {"shape": shape}, "action": {"name": "u1_wilson", "beta": beta}, "seed": 1}
    ...     return table
    >>> runs = [run(2.0, [8, 8], [0.70, 0.69]), run(3.0, [16, 16], [0.80])]
    >>> concat_runs(runs, parameters=["action.beta", "lattice.shape"])
       action.beta lattice.shape  chain  trajectory  plaquette
    0          2.0        (8, 8)      0           0       0.70
    1          2.0        (8, 8)      0           1       0.69
    2          3.0      (16, 16)      0           0       0.80
    >>> list(concat_runs(runs).columns[:2])  # by default, what differs
    ['lattice.shape', 'action.beta']
    >>> concat_runs(runs).groupby("action.beta")["plaquette"].mean().round(3).to_dict()
    {2.0: 0.695, 3.0: 0.8}
    """
    tables = list(tables)
    if not tables:
        raise LatticeFlowsError("concat_runs: expected at least one table, got none")
    specs = []
    for i, table in enumerate(tables):
        if not isinstance(table, pd.DataFrame):
            raise LatticeFlowsError(f"concat_runs: table {i} is a {type(table).__name__}, not a pandas DataFrame")
        spec = table.attrs.get("spec")
        if not isinstance(spec, Mapping):
            raise LatticeFlowsError(
                f"concat_runs: table {i} has no spec in table.attrs['spec'] (tables from Simulation.run and "
                "RunFolder.read_table carry one; set it to the run's sim.to_spec())"
            )
        specs.append(spec)
    leaves = None
    if parameters is None:
        leaves = [spec_leaves(spec) for spec in specs]
        paths = list(dict.fromkeys(p for leaf in leaves for p in leaf))
        parameters = [p for p in paths if any(leaf.get(p, None) != leaves[0].get(p, None) for leaf in leaves)]
    elif isinstance(parameters, str):
        parameters = [parameters]
    parts = []
    for i, (table, spec) in enumerate(zip(tables, specs)):
        columns = {}
        for path in parameters:
            if path in table.columns:
                raise LatticeFlowsError(f"concat_runs: parameter {path!r} is already a column of table {i}")
            if leaves is not None:  # the parameters that differ, found among the specs' leaves
                value = leaves[i].get(path)
            else:
                try:
                    value = spec_value(spec, path)
                except KeyError as exc:
                    raise LatticeFlowsError(f"concat_runs: table {i}'s spec has no parameter {exc.args[0]}") from None
            columns[path] = [_cell(value)] * len(table)
        part = pd.concat([pd.DataFrame(columns, index=table.index), table], axis=1)
        part.attrs = {}
        parts.append(part)
    result = pd.concat(parts, ignore_index=True)
    result.attrs = {"specs": [dict(spec) for spec in specs]}
    return result

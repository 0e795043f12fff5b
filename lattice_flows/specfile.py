"""Reading specs from TOML, YAML or JSON files, and ``--set key.path=value`` overrides."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any, Iterable

from .errors import SpecError

__all__ = ["load_spec", "apply_overrides"]


def load_spec(path: str | Path) -> dict[str, Any]:
    """The spec dict in a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file (YAML needs PyYAML)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json", ".yaml", ".yml"):
        raise SpecError(f"{path}: unknown spec format {suffix!r}; expected .toml, .yaml, .yml or .json")
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror or exc})") from None
    try:
        if suffix == ".toml":
            spec = tomllib.loads(text)
        elif suffix == ".json":
            spec = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise SpecError(f"{path}: reading YAML needs PyYAML: pip install 'lattice-flows[yaml]'") from None
            spec = yaml.safe_load(text)
    except SpecError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean a malformed file
        raise SpecError(f"{path}: malformed {suffix[1:].upper()}: {exc}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: expected a table of spec keys at the top level, got {type(spec).__name__}")
    return spec


def _parse_value(text: str) -> Any:
    """A JSON value if ``text`` is one (``3``, ``2.5``, ``true``, ``[16, 16]``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(spec: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """A copy of ``spec`` with ``key.path=value`` assignments applied (values parsed as JSON when they can be).

    ``action.beta=3`` sets ``spec["action"]["beta"] = 3``; intermediate tables are created as needed.

    >>> apply_overrides({"action": {"name": "u1_wilson", "beta": 2.0}}, ["action.beta=3", "lattice.shape=[8, 8]"])
    {'action': {'name': 'u1_wilson', 'beta': 3}, 'lattice': {'shape': [8, 8]}}
    >>> apply_overrides({}, ["sampler.name=hmc"])  # not JSON: kept as a string
    {'sampler': {'name': 'hmc'}}
    """
    spec = copy.deepcopy(spec)
    for assignment in assignments:
        key_path, sep, raw = assignment.partition("=")
        keys = key_path.strip().split(".")
        if not sep or not all(keys):
            raise SpecError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. action.beta=3.0")
        table = spec
        for i, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise SpecError(f"--set {assignment!r}: {'.'.join(keys[: i + 1])} is not a table")
        table[keys[-1]] = _parse_value(raw.strip())
    return spec

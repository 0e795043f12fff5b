"""The spec reference, generated from the components' own parameter declarations so it cannot drift.

Every top-level spec key (:data:`lattice_flows.simulation.SPEC_KEYS`), the ``training`` table
(:class:`~lattice_flows.training.TrainingSettings`) and, for every registered component of every kind
(:data:`lattice_flows.REGISTRIES`), its name, package, docstring summary and a table of its spec
parameters: name, type, default, allowed values and help text, read from the attrs fields declared with
:mod:`lattice_flows.params` (a flow's fields live in its nested ``Config`` class). Fields the simulation
injects (``injected(...)``) are listed separately: they are not spec keys.

- :func:`spec_reference_markdown`: the Markdown of ``docs/spec-reference.md``;
- :func:`spec_keys_text`: one plain-text line per top-level key, for a command line's ``--help``;
- :func:`components_text`: every registered component with its parameters, as plain text
  (``lattice-flows plugins``).

``python -m lattice_flows.reference > docs/spec-reference.md`` regenerates the reference;
``--package NAME`` (repeatable) keeps only the components of those installed packages.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from typing import Any, Iterable, Sequence

import attrs

from . import params
from .base import Flow, Observable
from .registry import REGISTRIES, PluginEntry, Registry
from .run_settings import SPEC_KEYS, RunSettings
from .spec import spec_fields
from .training import TrainingSettings

__all__ = ["spec_reference_markdown", "spec_keys_text", "components_text", "main"]

#: The command that regenerates ``docs/spec-reference.md`` (named in its header).
COMMAND = "python -m lattice_flows.reference > docs/spec-reference.md"

# The top-level keys that are not run settings: (value, required, meaning). Run settings (n_chains, seed, ...)
# are described by their own fields; a key of SPEC_KEYS in neither place is an error, not a silent gap.
_STRUCTURAL_KEYS: dict[str, tuple[str, str, str]] = {
    "lattice": ("table", "yes", "the lattice sizes, `{shape = [L_0, L_1, ...]}`, periodic in every direction"),
    "action": ("action", "yes", "the action `S`; the target density is `exp(-S)`"),
    "flow": ("flow", "no", "a normalizing flow `f: z -> x`; needed by `training`, `fthmc` and `flow_imh`"),
    "training": ("table", "no (needs `flow`)", "how `Simulation.train` trains the flow (reverse KL)"),
    "sampler": ("sampler", "yes", "the Markov-chain (or independent) sampler"),
    "observables": (
        "list",
        "no",
        "what is measured after every update; default: every observable of the action's theory that applies "
        "to it and needs no parameters",
    ),
}

_TITLES = {
    "actions": "Actions",
    "flows": "Flows",
    "integrators": "Integrators",
    "observables": "Observables",
    "samplers": "Samplers",
}

_INJECTED = {
    "action": "the spec's `action`",
    "lattice_shape": "`lattice.shape`",
    "flow": "the spec's `flow`, which must be present",
}


# -- reading the declarations ---------------------------------------------------------------------


def _package(entry: PluginEntry) -> str:
    """The registering distribution's name in canonical form (``lattice-flows``), without its version.

    The version, and whether the name is spelt with ``_`` or ``-``, depend on how the package was
    installed (a wheel's ``.dist-info`` or a source tree's ``.egg-info``); the reference must not.
    """
    name = entry.distribution
    if name.startswith("<"):
        return name
    return re.sub(r"[-_.]+", "-", name.split(" ")[0]).lower()


def _parameter_class(cls: type) -> type:
    """The attrs class holding the spec parameters: a flow's ``Config``, else the class itself."""
    return cls.Config if isinstance(cls, type) and issubclass(cls, Flow) else cls


def _summary(cls: type) -> str:
    """The first paragraph of the class's own docstring, on one line, Sphinx roles removed."""
    doc = cls.__dict__.get("__doc__") or ""
    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    line = " ".join(part.strip() for part in paragraph.splitlines()).strip()
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", line) or "(no docstring)"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(field: attrs.Attribute) -> str:
    """``> 0``, ``>= 1 and < 0.5``, ... for the numbers of :func:`lattice_flows.params.real` and ``integer``.

    params.py keeps the bounds in its validator's closure (the metadata holds only help and type).
    """
    validator = field.validator
    if not inspect.isfunction(validator) or validator.__module__ != params.__name__:
        return ""  # not a number declared with lattice_flows.params: its help text states any bounds
    bound = inspect.getclosurevars(validator).nonlocals
    parts = [f"{op} {_number(bound[key])}" for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if bound.get(key) is not None]
    return " and ".join(parts)


def _type(field: attrs.Attribute) -> str:
    meta = field.metadata
    kind = meta.get("type")
    if kind == "component":
        return REGISTRIES[meta["component"]].singular
    if kind == "choice" or kind == "device":
        return "string"
    if kind == "bool":
        return "boolean"
    if kind is not None:
        return kind
    if isinstance(field.type, type):
        return field.type.__name__
    return str(field.type or "")


def _allowed(field: attrs.Attribute, *, markdown: bool) -> str:
    meta = field.metadata
    kind = meta.get("type")
    if kind == "choice":
        values = [json.dumps(c) for c in meta["choices"]]
        return ", ".join(f"`{v}`" for v in values) if markdown else "one of " + ", ".join(values)
    if kind == "component":
        registry = REGISTRIES[meta["component"]]
        if markdown:
            return f"a name or a table with `name`; see [{registry.kind}](#{registry.kind})"
        return f"a name or a table with name: {', '.join(registry.names())}"
    if kind == "list of integers":
        return "each >= 1"
    if kind == "odd integer":
        return "odd, >= 1"
    return _bounds(field)


def _default(field: attrs.Attribute) -> str:
    if field.default is attrs.NOTHING:
        return "required"
    value = field.default
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        value = value.factory()
    if value is None:
        return "not set"  # an optional parameter with no value (TOML has no null)
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text and text not in ("required", "not set") else text


def _parameter_table(fields: Sequence[attrs.Attribute]) -> list[str]:
    lines = ["| parameter | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in fields:
        cells = [f"`{f.name}`", _type(f), _code(_default(f)), _allowed(f, markdown=True), f.metadata.get("help", "")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _selected(registry: Registry, packages: set[str] | None) -> dict[str, PluginEntry]:
    entries = registry.entries()
    if packages is None:
        return entries
    return {name: e for name, e in entries.items() if _package(e) in packages}


def _canonical_packages(packages: Iterable[str] | None) -> set[str] | None:
    if packages is None:
        return None
    return {re.sub(r"[-_.]+", "-", p).lower() for p in packages}


# -- Markdown -------------------------------------------------------------------------------------


def _top_level_rows() -> list[str]:
    settings = {f.name: f for f in attrs.fields(RunSettings)}
    lines = ["| key | required | value | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for key in SPEC_KEYS:
        if key in _STRUCTURAL_KEYS:
            value, required, meaning = _STRUCTURAL_KEYS[key]
            if value in ("action", "flow", "sampler"):
                value = f"{value} (see [{value}s](#{value}s))"
            elif key in ("lattice", "training", "observables"):
                value = f"{value} (see [`{key}`](#{key}))"
            cells = [f"`{key}`", required, value, "", meaning]
        elif key in settings:
            f = settings[key]
            allowed = _allowed(f, markdown=True)
            value = _type(f) + (f", {allowed}" if allowed else "")
            cells = [f"`{key}`", "no", value, _code(_default(f)), f.metadata.get("help", "")]
        else:
            raise RuntimeError(f"spec key {key!r} has no description in lattice_flows.reference; add one")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _narrows(cls: type) -> bool:
    """Whether the observable class overrides :meth:`Observable.applies_to` (it applies to fewer actions than its theory's)."""
    applies_to = getattr(cls, "applies_to", None)
    return applies_to is not None and getattr(applies_to, "__func__", None) is not Observable.applies_to.__func__


def _component_section(kind: str, name: str, entry: PluginEntry) -> list[str]:
    cls = entry.cls
    params_cls = _parameter_class(cls)
    fields = spec_fields(params_cls)
    injected = [f for f in attrs.fields(params_cls) if "inject" in f.metadata]
    lines = [f"### `{name}`", "", _summary(cls), ""]
    facts = [f"class `{entry.target}` from package `{_package(entry)}`"]
    theory = getattr(cls, "theory", None)
    if isinstance(theory, str):
        facts.append(f"theory `{theory}`")
    if kind == "integrators":
        facts.append(f"order {cls.order}")
    if kind == "observables" and tuple(cls.moments) != (1,):
        facts.append("the summary reports " + ", ".join("`<O>`" if p == 1 else f"`<O^{p}>`" for p in cls.moments))
    if kind == "observables" and _narrows(cls):
        facts.append(f"applies only to {cls.requirement()}")
    lines.append("- " + "; ".join(facts))
    example = {"name": name, **dict(cls.example_params)}
    lines.append(f"- example: `{json.dumps(example)}`")
    if injected:
        filled = ", ".join(f"`{f.name}` ({_INJECTED.get(f.metadata['inject'], f.metadata['inject'])})" for f in injected)
        lines.append(f"- filled in by the simulation, not spec parameters: {filled}")
    lines.append("")
    if fields:
        lines += _parameter_table(fields)
    else:
        lines.append("No parameters.")
    lines.append("")
    return lines


def spec_reference_markdown(packages: Iterable[str] | None = None) -> str:
    """The spec reference as Markdown (the content of ``docs/spec-reference.md``).

    ``packages``: keep only the components registered by these distributions (``"lattice-flows"``;
    ``-``, ``_`` and case do not matter); ``None``, the default, documents every registered component.
    The text depends only on the components' declarations, never on versions or install paths.
    """
    wanted = _canonical_packages(packages)
    out = [
        "# Spec reference",
        "",
        f"<!-- Generated by `{COMMAND}`; do not edit by hand. tests/test_docs.py checks that it is current. -->",
        "",
        "A spec is a table: a Python dict for `Simulation.from_spec`, or a TOML, YAML or JSON file for the",
        "command line. This page is generated from the parameters the components declare, so it lists exactly",
        "what the code accepts. Every key is consumed: an unknown key, a missing required one or a value of the",
        "wrong type is an error that names its path in the spec. A component (action, flow, integrator,",
        "observable, sampler) is given by its name (`\"leapfrog\"`) or by a table with a `name` key and its",
        "parameters (`{name = \"leapfrog\", step_size = 0.1, n_steps = 10}`); parameters left out take their",
        "defaults, and `Simulation.to_spec()` writes every default out.",
        "",
        "## Top-level keys",
        "",
        *_top_level_rows(),
        "",
        "## `lattice`",
        "",
        "| parameter | type | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
        "| `shape` | list of integers | required | each >= 1 | lattice sizes `[L_0, L_1, ...]`, periodic; the action "
        "sets the number of dimensions and the flows may restrict the sizes |",
        "",
        "## `training`",
        "",
        _summary(TrainingSettings).rstrip(".") + ", used by `Simulation.train` (allowed only with a `flow`).",
        "",
        *_parameter_table(spec_fields(TrainingSettings)),
        "",
        "## `observables`",
        "",
        "A list; each entry is an observable's name or a table with `name`, the observable's parameters and",
        "optionally `column`, the name of its column in the results table. The default column is the name, with",
        "the parameters appended when there are any: `wilson_loop(R=2,T=2)`. Every observable must measure the",
        "action's theory, and apply to the action where it says it needs more (`applies only to`).",
        "",
    ]
    for kind, registry in REGISTRIES.items():
        entries = _selected(registry, wanted)
        out += [f"## {_TITLES.get(kind, kind.capitalize())}", ""]
        out += [f"Entry-point group `{registry.group}`; each subclasses `lattice_flows.{registry.base.__name__}`.", ""]
        if not entries:
            out += ["None registered.", ""]
        for name, entry in entries.items():
            out += _component_section(kind, name, entry)
    return "\n".join(out).rstrip("\n") + "\n"


# -- plain text -----------------------------------------------------------------------------------


def spec_keys_text() -> str:
    """One line per top-level spec key (``key  meaning``), for a command line's ``--help``.

    Component keys list the registered names (read from the entry points; nothing is imported).
    """
    settings = {f.name: f for f in attrs.fields(RunSettings)}
    width = max(len(k) for k in SPEC_KEYS) + 2
    lines = []
    for key in SPEC_KEYS:
        if key in _STRUCTURAL_KEYS:
            _, required, meaning = _STRUCTURAL_KEYS[key]
            required = "required" if required == "yes" else "optional" + required[2:].replace("`", "")
            text = f"{required}: {meaning.replace('`', '')}"
            if key in ("action", "flow", "sampler"):
                text += f"; a name or a table with name: {', '.join(REGISTRIES[f'{key}s'].names()) or '(none installed)'}"
            elif key == "training":
                text += f"; a table of {', '.join(f.name for f in spec_fields(TrainingSettings))}"
            elif key == "observables":
                text += f"; names or tables with name (and column): {', '.join(REGISTRIES['observables'].names())}"
        elif key in settings:
            f = settings[key]
            allowed = _allowed(f, markdown=False)
            text = f"optional, {_type(f)}{' ' + allowed if allowed else ''}, default {_default(f)}: {f.metadata.get('help', '')}"
        else:
            raise RuntimeError(f"spec key {key!r} has no description in lattice_flows.reference; add one")
        lines.append(f"{key:<{width}}{text}")
    return "\n".join(lines)


def _plain(text: str) -> str:
    return text.replace("``", "").replace("`", "")


def components_text(packages: Iterable[str] | None = None) -> str:
    """Every registered component by kind, as plain text for ``lattice-flows plugins``.

    Per component: its name, package (with version when the installation records one) and class, its
    docstring summary, and one line per spec parameter (type, default, allowed values, help).
    ``packages`` as in :func:`spec_reference_markdown`.
    """
    wanted = _canonical_packages(packages)
    lines: list[str] = []
    for kind, registry in REGISTRIES.items():
        lines.append(f"{kind} (entry-point group {registry.group}):")
        entries = _selected(registry, wanted)
        if not entries:
            lines.append("  (none registered)")
        for name, entry in entries.items():
            version = entry.distribution.split(" ", 1)[1] if " " in entry.distribution and not entry.distribution.startswith("<") else ""
            package = _package(entry) + (f" {version}" if version else "")
            lines.append(f"  {name}  [{package}; {entry.target}]")
            lines.append(f"      {_plain(_summary(entry.cls))}")
            injected = [f.metadata["inject"] for f in attrs.fields(_parameter_class(entry.cls)) if "inject" in f.metadata]
            if injected:
                lines.append(f"      (filled in by the simulation: {', '.join(injected)})")
            for f in spec_fields(_parameter_class(entry.cls)):
                allowed = _allowed(f, markdown=False)
                facts = ", ".join(x for x in (_type(f), _default(f) if _default(f) in ("required", "not set") else f"default {_default(f)}", allowed) if x)
                lines.append(f"      {f.name}: {facts}; {f.metadata.get('help', '')}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lattice_flows.reference [--package NAME]... > docs/spec-reference.md``."""
    parser = argparse.ArgumentParser(
        prog="python -m lattice_flows.reference",
        description="Print the spec reference (Markdown) of every registered component.",
    )
    parser.add_argument(
        "--package",
        action="append",
        metavar="NAME",
        help="only the components of this installed package (repeatable), e.g. lattice-flows",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(spec_reference_markdown(args.package))
    return 0


if __name__ == "__main__":
    sys.exit(main())

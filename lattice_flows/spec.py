"""Building components from spec sections, with errors that name the path in the spec.

A spec section for a component is its name (``"leapfrog"``) or a table with a ``name`` key and
the component's parameters (``{"name": "leapfrog", "step_size": 0.1, "n_steps": 10}``). Every key
is consumed; anything unknown, missing or ill-typed raises :class:`SpecError` with the path
(``spec['sampler']['integrator']['step_size']``) and what was expected.

This module sits below the base classes (whose ``from_spec`` / ``to_spec`` call it) and below the
registries: it finds the registry of a kind in :data:`lattice_flows.kinds.REGISTRIES`.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from .errors import ParameterError, SpecError, UnknownComponentError
from .kinds import registry_of_kind

__all__ = [
    "spec_fields", "build_from_params", "build_component", "component_spec", "params_of", "check_table", "differing_keys", "flow_section_with_defaults",
    "resume_difference",
]


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two spec tables (missing counts as ``None``), sorted.

    >>> differing_keys({"seed": 1, "n_chains": 4}, {"seed": 2, "n_chains": 4, "dtype": "float32"})
    ['dtype', 'seed']
    """
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


#: Spec keys that may differ when a run is resumed: more trajectories extend a run.
GROWING_KEYS = ("n_trajectories",)


def resume_difference(saved: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """Why a run made with spec ``saved`` cannot be resumed with ``spec``, or ``None`` if it can.

    Only ``n_trajectories`` may differ, and only grow (the chains go on from where they stopped).
    """
    keys = differing_keys(saved, spec)
    fixed = [k for k in keys if k not in GROWING_KEYS]
    if fixed:
        return f"differs in {', '.join(fixed)}"
    for key in keys:
        old, new = saved.get(key), spec.get(key)
        if not (isinstance(old, int) and isinstance(new, int) and new >= old):
            return f"{key} can only grow, from {old!r}; got {new!r}"
    return None


def flow_section_with_defaults(section: Mapping[str, Any], flow_class: type) -> dict[str, Any]:
    """A saved spec's ``flow`` section with the parameters it lacks at their defaults, as ``flow_class`` has them now.

    A parameter added to a flow class after a checkpoint was written (the flow then behaved as the default
    does) so matches a spec that holds the default. The section comes back unchanged (a copy) where it does not
    build a configuration of ``flow_class`` (another flow, or a bad value)."""
    config_class = getattr(flow_class, "Config", None)
    params = {k: v for k, v in section.items() if k != "name"}
    try:
        completed = params_of(build_from_params(config_class, params, what="checkpoint", path="flow", context={}))
    except Exception:  # noqa: BLE001 - compared as it is, and the comparison names what differs
        return dict(section)
    return {**({"name": section["name"]} if "name" in section else {}), **completed}


def check_table(value: Any, path: str, what: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping with string keys, else a :class:`SpecError`."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected a table (dict) for {what}, got {value!r} ({type(value).__name__})")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(f"{path}: keys must be strings, got {key!r}")
    return value


def spec_fields(cls: type) -> list[attrs.Attribute]:
    """The attrs fields of ``cls`` that are spec parameters (those the simulation does not inject)."""
    return [f for f in attrs.fields(cls) if "inject" not in f.metadata]


def build_from_params(cls: type, params: Mapping[str, Any], *, what: str, path: str, context: Mapping[str, Any]):
    """Build the attrs class ``cls`` from ``params``, consuming every key.

    Fields with ``metadata["component"]`` are built from their own section by the registry of that
    kind; fields with ``metadata["inject"]`` are taken from ``context`` (never from the spec).
    ``what`` names the thing in messages (``"u1_wilson"``).
    """
    fields = spec_fields(cls)
    accepted = [f.name for f in fields]
    for key in params:
        if key not in accepted:
            raise SpecError(
                f"{path}: unknown parameter {key!r} for {what}; accepted: {', '.join(accepted) or '(none)'}"
            )
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    missing = [name for name in required if name not in params]
    if missing:
        raise SpecError(f"{path}: missing parameter {missing[0]!r} for {what}; required: {', '.join(required)}")
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name in params:
            value = params[f.name]
            if "component" in f.metadata:
                value = build_component(f.metadata["component"], value, f"{path}[{f.name!r}]", context)
            kwargs[f.name] = value
    for f in attrs.fields(cls):
        if "inject" in f.metadata:
            needed = f.metadata["inject"]
            if needed not in context:
                raise SpecError(f"{path}: {what} needs a {needed!r} section in the spec, and there is none")
            kwargs[f.name] = context[needed]
    try:
        return cls(**kwargs)
    except ParameterError as exc:
        raise SpecError(f"{path}[{exc.param!r}]: {exc.reason}") from None


def build_component(kind: str, section: Any, path: str, context: Mapping[str, Any]):
    """Build a component of ``kind`` (``"actions"``, ...) from its spec section."""
    registry = registry_of_kind(kind)
    if isinstance(section, str):
        name, params = section, {}
    else:
        section = check_table(section, path, f"a {registry.singular}")
        if "name" not in section:
            raise SpecError(f"{path}: missing key 'name'; available {registry.kind}: {', '.join(registry.names())}")
        name = section["name"]
        params = {k: v for k, v in section.items() if k != "name"}
    if not isinstance(name, str):
        raise SpecError(f"{path}['name']: expected the name of a {registry.singular}, got {name!r}")
    try:
        cls = registry.get(name)
    except UnknownComponentError as exc:
        raise SpecError(f"{path}: {exc}") from None
    return cls.from_spec(params, name=name, path=path, context=context)


def component_spec(kind: str, component: Any) -> dict[str, Any]:
    """The spec section that rebuilds ``component``: ``{"name": ..., **parameters}``."""
    return {"name": registry_of_kind(kind).name_of(type(component)), **component.to_spec()}


def params_of(obj: Any) -> dict[str, Any]:
    """The spec parameters of the attrs instance ``obj``; nested components as their sections."""
    out: dict[str, Any] = {}
    for f in spec_fields(type(obj)):
        value = getattr(obj, f.name)
        if "component" in f.metadata:
            if value is None:  # an optional component left out: left out of the spec too (TOML has no null)
                continue
            value = component_spec(f.metadata["component"], value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out

"""Building a run from a spec, and the spec back from a run.

:func:`build_run` checks the spec's keys, builds the lattice, the action, the run settings (refusing a
run that cannot fit in memory before anything of its size exists), the flow (its initial weights
seeded by the spec, an allocation failure reported as a :class:`SpecError`), the training settings,
the sampler and the observables, and checks that the action is finite in the run's dtype.
:func:`run_spec` is its inverse: the spec, every default written out, of the built parts.
Every error a spec can cause is a :class:`SpecError` naming its path.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import attrs
import torch

from . import distributed, resources
from .base import Action, Flow, Observable, Sampler
from .errors import SpecError
from .params import is_size
from .registry import FLOWS, OBSERVABLES
from .run_settings import DTYPES, FLOW_INIT_SEED_OFFSET, SETTINGS_KEYS, SPEC_KEYS, RunSettings, run_device, settings_device
from .run_table import RESERVED_COLUMNS
from .spec import build_component, build_from_params, check_table, component_spec, params_of, spec_fields
from .training import TrainingSettings

__all__ = [
    "RunParts", "build_run", "run_spec", "run_context", "build_lattice", "build_flow", "build_observables",
    "default_observables", "check_fits", "build_flow_within_memory", "check_action_finite",
]


@attrs.frozen(kw_only=True)
class RunParts:
    """The components and settings of a run, built and checked by :func:`build_run`."""

    lattice_shape: tuple[int, ...]
    action: Action
    sampler: Sampler
    observables: dict[str, Observable]
    settings: RunSettings
    flow: Flow | None = None
    training: TrainingSettings | None = None


def build_run(spec: Mapping[str, Any]) -> RunParts:
    """Every part of the run that ``spec`` describes, built and checked (the flow on the run's device and dtype)."""
    spec = check_table(spec, "spec", "the simulation spec")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise SpecError(f"spec: unknown key {unknown[0]!r}; accepted: {', '.join(SPEC_KEYS)}")
    for key in ("lattice", "action", "sampler"):
        if key not in spec:
            raise SpecError(f"spec: missing key {key!r}; required: lattice, action, sampler")
    lattice_shape = build_lattice(spec["lattice"])

    context: dict[str, Any] = {"lattice_shape": lattice_shape}
    action = build_component("actions", spec["action"], "spec['action']", context)
    try:
        action.field_shape(lattice_shape)
    except ValueError as exc:
        raise SpecError(f"spec['lattice']['shape']: {exc}") from None
    context["action"] = action
    settings_spec = {k: spec[k] for k in SETTINGS_KEYS if k in spec}
    settings = build_from_params(RunSettings, settings_spec, what="the run", path="spec", context={})
    check_fits(spec, lattice_shape, action, settings)  # before any flow or field of that size is built

    flow = None
    if spec.get("flow") is not None:
        # the initial weights follow the spec's seed (not torch's global generator), so that the
        # same spec gives the same flow in every process: reruns, resumed runs, and every rank
        seed = spec.get("seed", 0) if isinstance(spec.get("seed", 0), int) else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((seed + FLOW_INIT_SEED_OFFSET) % 2**63)
            flow = build_flow_within_memory(lambda: build_flow(spec["flow"], action, context), spec["flow"])
        context["flow"] = flow
    training = None
    if spec.get("training") is not None:
        if flow is None:
            raise SpecError("spec['training']: there is no 'flow' section, so there is nothing to train")
        table = check_table(spec["training"], "spec['training']", "the training settings")
        training = build_from_params(TrainingSettings, table, what="training", path="spec['training']", context={})

    sampler = build_component("samplers", spec["sampler"], "spec['sampler']", context)
    try:
        sampler.check_action(action)
    except ValueError as exc:
        raise SpecError(f"spec['sampler']: {exc}") from None

    if "observables" in spec:
        observables = build_observables(spec["observables"], action, context)
    else:
        observables = default_observables(action, context)

    if flow is not None:
        flow.to(device=run_device(settings), dtype=DTYPES[settings.dtype])
    check_action_finite(action, lattice_shape, settings)
    return RunParts(
        lattice_shape=lattice_shape, action=action, sampler=sampler, observables=observables, settings=settings,
        flow=flow, training=training,
    )


def run_spec(
    *,
    lattice_shape: tuple[int, ...],
    action: Action,
    sampler: Sampler,
    observables: Mapping[str, Observable],
    settings: RunSettings,
    flow: Flow | None = None,
    training: TrainingSettings | None = None,
) -> dict[str, Any]:
    """A spec dict, with every default written out, that builds these parts again (a fresh copy)."""
    entries: list[Any] = []
    for column, obs in observables.items():
        section = component_spec("observables", obs)
        default_column = section["name"] if len(section) == 1 else None
        if column == default_column:
            entries.append(section["name"])
        else:
            entries.append({**section, "column": column})
    spec: dict[str, Any] = {
        "lattice": {"shape": list(lattice_shape)},
        "action": component_spec("actions", action),
    }
    if flow is not None:
        spec["flow"] = component_spec("flows", flow)
    if training is not None:
        spec["training"] = params_of(training)
    spec["sampler"] = component_spec("samplers", sampler)
    spec["observables"] = entries
    spec.update(params_of(settings))
    return copy.deepcopy(spec)


def run_context(lattice_shape: tuple[int, ...], action: Action, flow: Flow | None) -> dict[str, Any]:
    """What components of this run are injected with (:func:`lattice_flows.params.injected`)."""
    context: dict[str, Any] = {"lattice_shape": lattice_shape, "action": action}
    if flow is not None:
        context["flow"] = flow
    return context


def build_lattice(section: Any) -> tuple[int, ...]:
    """The lattice shape of the ``lattice`` section ``{"shape": [L_0, ..., L_{D-1}]}``."""
    lattice = check_table(section, "spec['lattice']", "the lattice")
    if set(lattice) != {"shape"}:
        extra = sorted(set(lattice) - {"shape"})
        raise SpecError(
            f"spec['lattice']: unknown key {extra[0]!r}; accepted: shape" if extra else "spec['lattice']: missing key 'shape'"
        )
    shape = lattice["shape"]
    if not (
        isinstance(shape, (list, tuple))
        and shape
        and all(is_size(n) for n in shape)
    ):
        raise SpecError(
            f"spec['lattice']['shape']: expected a list of positive integers (at least one, each at most 2**63 - 1) "
            f"such as [16, 16], got {shape!r}"
        )
    return tuple(shape)


def build_flow(section: Any, action: Action, context: Mapping[str, Any]) -> Flow:
    """The flow of the ``flow`` section, after checking it transforms the action's fields on this lattice."""
    name = section if isinstance(section, str) else check_table(section, "spec['flow']", "a flow").get("name")
    if isinstance(name, str) and name in FLOWS.names():
        cls = FLOWS.get(name)
        if cls.theory != action.theory:
            raise SpecError(
                f"spec['flow']: flow {name!r} transforms {cls.theory} fields, but the action is a {action.theory} theory"
            )
        try:
            cls.check_lattice(context["lattice_shape"])
        except ValueError as exc:
            raise SpecError(f"spec['lattice']['shape']: {exc}") from None
    return build_component("flows", section, "spec['flow']", context)


def build_observables(entries: Any, action: Action, context: Mapping[str, Any]) -> dict[str, Observable]:
    """The observables of the ``observables`` list by column name: ``name`` or ``name(k=v,...)`` unless an
    entry gives its ``column``; none of the action's theory is refused, as is a column used twice or reserved
    (:data:`lattice_flows.run_table.RESERVED_COLUMNS`)."""
    if not isinstance(entries, (list, tuple)):
        raise SpecError(
            "spec['observables']: expected a list of observable names or tables "
            f"(e.g. ['plaquette', {{'name': 'wilson_loop', 'R': 2, 'T': 2}}]), got {entries!r}"
        )
    observables: dict[str, Observable] = {}
    for i, entry in enumerate(entries):
        path = f"spec['observables'][{i}]"
        column = None
        if isinstance(entry, Mapping) and "column" in entry:
            column = entry["column"]
            if not isinstance(column, str) or not column:
                raise SpecError(f"{path}['column']: expected a non-empty string, got {column!r}")
            entry = {k: v for k, v in entry.items() if k != "column"}
        obs = build_component("observables", entry, path, context)
        name = OBSERVABLES.name_of(type(obs))
        if obs.theory != action.theory:
            fitting = [n for n, e in OBSERVABLES.entries().items() if getattr(e.cls, "theory", None) == action.theory]
            raise SpecError(
                f"{path}: observable {name!r} measures {obs.theory} fields, but the action is a "
                f"{action.theory} theory; observables for {action.theory}: {', '.join(sorted(fitting)) or '(none)'}"
            )
        if not type(obs).applies_to(action):
            action_name = _action_name(action)
            fitting = [n for n, e in OBSERVABLES.entries().items() if _measures(e.cls, action)]
            raise SpecError(
                f"{path}: observable {name!r} does not apply to the action {action_name!r}: it needs "
                f"{type(obs).requirement()}; observables for {action_name}: {', '.join(sorted(fitting)) or '(none)'}"
            )
        if column is None:
            params = obs.to_spec()
            column = name if not params else name + "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")"
        if column in observables or column in RESERVED_COLUMNS:
            raise SpecError(f"{path}: column name {column!r} is used twice; give one entry a different 'column'")
        observables[column] = obs
    return observables


def _action_name(action: Action) -> str:
    """The registered name of ``action``, or its class name when it is not registered."""
    try:
        return component_spec("actions", action)["name"]
    except LookupError:
        return type(action).__name__


def _measures(cls: type, action: Action) -> bool:
    """Whether the observable class ``cls`` measures ``action``'s fields: its theory, and it applies to the action
    (:meth:`Observable.applies_to`)."""
    if getattr(cls, "theory", None) != action.theory:
        return False
    applies_to = getattr(cls, "applies_to", None)
    return applies_to is None or bool(applies_to(action))


def default_observables(action: Action, context: Mapping[str, Any]) -> dict[str, Observable]:
    """Every registered observable of the action's theory that applies to it (:meth:`Observable.applies_to`)
    and needs no parameters, by name (sorted), less those that evaluate an action whose call is expensive
    (:attr:`Observable.evaluates_action`, :attr:`Action.expensive_call`): the
    observables of a spec without an ``observables`` key. ``context`` as for building (``lattice_shape``,
    ``action``)."""
    observables = {}
    for name, entry in sorted(OBSERVABLES.entries().items()):
        cls = entry.cls
        if not _measures(cls, action):
            continue
        if any(f.default is attrs.NOTHING for f in spec_fields(cls)):
            continue
        if getattr(cls, "evaluates_action", False) and getattr(action, "expensive_call", False):
            continue
        observables[name] = build_component("observables", name, f"spec['observables'] (default {name!r})", context)
    return observables


def check_fits(spec: Mapping[str, Any], lattice_shape: tuple[int, ...], action: Action, settings: RunSettings) -> None:
    """A :class:`SpecError` naming ``lattice.shape``, ``n_chains`` and ``n_trajectories`` if the run cannot
    fit in the memory of its device (:mod:`lattice_flows.resources`), raised before anything of that size exists."""
    training = spec.get("training") if isinstance(spec.get("training"), Mapping) else {}
    observables = spec.get("observables")
    n_local = -(-settings.n_chains // distributed.world_size())  # the chains of one process
    parts = resources.estimate(
        action.field_shape(lattice_shape),
        n_chains=n_local,
        n_trajectories=settings.n_trajectories,
        n_columns=len(observables) if isinstance(observables, (list, tuple)) else 4,
        itemsize=DTYPES[settings.dtype].itemsize,
        flow=spec.get("flow"),
        batch_size=training.get("batch_size") if isinstance(training.get("batch_size"), int) else None,
    )
    device = settings_device(settings)
    free, source = resources.available(device)
    if free is None or parts.total <= free:
        return
    keys = {
        "fields": "spec['lattice']['shape'] and spec['n_chains']",
        "records": "spec['n_trajectories'] and spec['n_chains']",
        "flow": "spec['lattice']['shape'], spec['n_chains'] or spec['training']['batch_size'], and spec['flow'] (n_layers, hidden)",
    }
    largest = max(parts, key=parts.get)
    shown = ", ".join(f"{name} {resources.format_bytes(n)}" for name, n in parts.items())
    raise SpecError(
        f"{keys[largest]}: the run needs at least {resources.format_bytes(parts.total)} ({shown}; lattice "
        f"{list(lattice_shape)}, {n_local} chains, {settings.n_trajectories} trajectories, {settings.dtype}) but only "
        f"{resources.format_bytes(free)} is available ({source}); reduce lattice.shape, n_chains or n_trajectories"
        + (" (or the flow's n_layers, hidden, training.batch_size)" if "flow" in parts else "")
    )


def build_flow_within_memory(build: Callable[[], Flow], section: Any) -> Flow:
    """``build()``, with an allocation failure (sizes such as ``n_bins`` or ``kernel_size`` whose weights cannot
    exist: ``MemoryError``, the allocator's ``RuntimeError``, a size beyond 64 bits; see
    :func:`lattice_flows.resources.is_allocation_failure`) as a :class:`SpecError`."""
    try:
        return build()
    except (MemoryError, RuntimeError, TypeError, OverflowError) as exc:
        if not resources.is_allocation_failure(exc):
            raise
        text = str(exc).strip()
        sizes = [k for k, v in section.items() if isinstance(v, (int, list)) and not isinstance(v, bool)] if isinstance(section, Mapping) else []
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        raise SpecError(
            f"spec['flow']: the flow's weights cannot be allocated ({first}); reduce its sizes"
            + (f" ({', '.join(sizes)})" if sizes else "")
        ) from None


def check_action_finite(action: Action, lattice_shape: tuple[int, ...], settings: RunSettings) -> None:
    """A :class:`SpecError` naming ``spec['action']`` if the action or its force of a field drawn from the
    prior is not finite in the run's dtype (couplings too large for it, e.g. a float32 overflow), or if the
    action refuses the dtype or lattice when it draws its auxiliary fields (:meth:`Action.refresh`); the
    action and force checked are those of what ``refresh`` returns, the ones the samplers evaluate."""
    device, dtype = run_device(settings), DTYPES[settings.dtype]
    generator = torch.Generator(device=device).manual_seed(0)
    x = action.sample_prior(1, lattice_shape, generator=generator, dtype=dtype, device=device)
    try:
        dynamics = action.refresh(x, generator)  # what the samplers evaluate (auxiliary fields drawn, if any)
    except ValueError as error:  # a setting the run's dtype or lattice cannot meet (a solver tolerance, say)
        raise SpecError(f"spec['action']: {error}") from None
    s = dynamics(x)
    bad = "action" if not bool(torch.isfinite(s).all()) else None
    if bad is None and not bool(torch.isfinite(dynamics.force(x)).all()):
        bad = "force"
    if bad is not None:
        params = ", ".join(f"{k} = {v!r}" for k, v in action.to_spec().items())
        raise SpecError(
            f"spec['action']: the {bad} of a field drawn from the prior is not finite in {settings.dtype} "
            f"({params} on {list(lattice_shape)}, S = {float(s[0])!r}); the couplings are too large for this dtype"
        )

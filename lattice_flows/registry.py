"""Plugin registries: one entry-point group per kind of component.

Built-in components and third-party ones come through the same door: a distribution declares

.. code-block:: toml

    [project.entry-points."lattice_flows.actions"]
    u1_wilson = "lattice_flows_u1.action:U1Wilson"

and :data:`ACTIONS` finds it. The core never imports a plugin by name. Two distributions that
register one name is an error (no silent pick); an unknown name answers with the available names;
an entry point that does not load a subclass of the kind's base class is a ``TypeError``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs
import entrypoints

from .base import Action, Flow, Integrator, Observable, Sampler
from .errors import ComponentLoadError, DuplicateComponentError, UnknownComponentError
from .kinds import REGISTRIES, registry_of_kind

__all__ = [
    "Registry",
    "PluginEntry",
    "ACTIONS",
    "FLOWS",
    "INTEGRATORS",
    "OBSERVABLES",
    "SAMPLERS",
    "REGISTRIES",
    "registry_of_kind",
]

T = TypeVar("T")


@attrs.frozen
class PluginEntry:
    """One registered component: its name, the class it loads, and where it comes from."""

    name: str
    target: str  # "module:object"
    distribution: str  # the distribution (package) that registers it, with its version
    cls: type


def _entry_points(group: str) -> list[entrypoints.EntryPoint]:
    """All entry points of ``group`` on ``sys.path``. Tests monkeypatch this to fake installed plugins."""
    return entrypoints.get_group_all(group)


class Registry(Generic[T]):
    """The components of one kind, read lazily from the entry-point group ``group``.

    ``kind`` is the plural used in messages and spec references (``"actions"``); ``base`` the class
    every entry must subclass.
    """

    def __init__(self, kind: str, group: str, base: type[T]):
        self.kind = kind
        self.group = group
        self.base = base
        self._found: dict[str, tuple[entrypoints.EntryPoint, str]] | None = None
        self._loaded: dict[str, PluginEntry] = {}

    @property
    def singular(self) -> str:
        return self.kind[:-1]

    def reload(self) -> None:
        """Forget what was found and loaded; the next look-up reads the entry points again."""
        self._found = None
        self._loaded = {}

    def names(self) -> list[str]:
        """The registered names, sorted (nothing is imported to list them)."""
        return sorted(self._discover())

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; :class:`UnknownComponentError` lists the available ones.

        Only this entry point is imported, so a broken plugin does not break the others.
        """
        found = self._discover()
        if name not in found:
            available = ", ".join(sorted(found)) or "(none installed)"
            raise UnknownComponentError(f"unknown {self.singular} {name!r}; available {self.kind}: {available}")
        return self._load(name).cls

    def entries(self) -> dict[str, PluginEntry]:
        """Every registered component by name, loaded and checked."""
        return {name: self._load(name) for name in self.names()}

    def name_of(self, cls: type) -> str:
        """The name under which ``cls`` is registered (looked up among the loaded entries first)."""
        names = [e.name for e in self._loaded.values() if e.cls is cls]
        if not names:
            names = [e.name for e in self.entries().values() if e.cls is cls]
        if len(names) != 1:
            raise LookupError(
                f"{cls.__qualname__} is registered as {len(names)} {self.kind} ({names}); expected exactly one"
            )
        return names[0]

    def _discover(self) -> dict[str, tuple[entrypoints.EntryPoint, str]]:
        if self._found is not None:
            return self._found
        found: dict[str, tuple[entrypoints.EntryPoint, str]] = {}
        for ep in _entry_points(self.group):
            dist = ep.distro.name if ep.distro is not None else "<unknown distribution>"
            if ep.name in found:
                other, other_dist = found[ep.name]
                # The same distribution seen twice on sys.path (an installed copy and a source
                # tree's egg-info, say) is one registration: the first on the path wins, as in Python.
                if other_dist == dist:
                    continue
                raise DuplicateComponentError(
                    f"{self.singular} {ep.name!r} is registered twice in entry-point group {self.group!r}: "
                    f"by {other_dist} ({other.module_name}:{other.object_name}) and by {dist} "
                    f"({ep.module_name}:{ep.object_name}); uninstall one or rename its entry point"
                )
            found[ep.name] = (ep, dist)
        self._found = found
        return found

    def _load(self, name: str) -> PluginEntry:
        if name in self._loaded:
            return self._loaded[name]
        ep, dist = self._discover()[name]
        target = f"{ep.module_name}:{ep.object_name}" if ep.object_name else ep.module_name
        try:
            obj = ep.load()
        except Exception as exc:
            raise ComponentLoadError(
                f"cannot load {self.singular} {name!r} ({target}, registered by {dist}): {type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(
                f"entry point {name!r} in group {self.group!r} ({target}, registered by {dist}) loads "
                f"{obj!r}, which is not a subclass of {self.base.__module__}.{self.base.__qualname__}"
            )
        version = f" {ep.distro.version}" if ep.distro is not None and ep.distro.version else ""
        entry = PluginEntry(name=name, target=target, distribution=dist + version, cls=obj)
        self._loaded[name] = entry
        return entry


ACTIONS: Registry[Action] = Registry("actions", "lattice_flows.actions", Action)
FLOWS: Registry[Flow] = Registry("flows", "lattice_flows.flows", Flow)
INTEGRATORS: Registry[Integrator] = Registry("integrators", "lattice_flows.integrators", Integrator)
OBSERVABLES: Registry[Observable] = Registry("observables", "lattice_flows.observables", Observable)
SAMPLERS: Registry[Sampler] = Registry("samplers", "lattice_flows.samplers", Sampler)

# The registries by kind, as named in component fields (:func:`lattice_flows.params.component`): entered in
# the table of kinds that spec building reads (REGISTRIES and registry_of_kind are the ones of lattice_flows.kinds).
REGISTRIES.update({r.kind: r for r in (ACTIONS, FLOWS, INTEGRATORS, OBSERVABLES, SAMPLERS)})



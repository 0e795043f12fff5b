"""The table of component kinds: ``"actions"``, ``"flows"``, ... -> the registry of that kind.

Spec building (:mod:`lattice_flows.spec`) looks a kind up here when it builds a nested section
(a sampler's ``integrator``) or names a component (:func:`~lattice_flows.spec.component_spec`).
The registries themselves are made in :mod:`lattice_flows.registry`, which enters them here: the
registries need the base classes, the base classes need spec building, and this table lets spec
building sit below both without importing either (a kind is known once its registry exists, which
is as soon as ``lattice_flows`` is imported).
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import UnknownComponentError

__all__ = ["Kind", "REGISTRIES", "registry_of_kind"]


class Kind(Protocol):
    """What spec building needs of a registry (:class:`lattice_flows.registry.Registry` is one)."""

    kind: str

    @property
    def singular(self) -> str: ...

    def names(self) -> list[str]: ...

    def get(self, name: str) -> type: ...

    def name_of(self, cls: type) -> str: ...


#: The registries by kind, as named in component fields (:func:`lattice_flows.params.component`);
#: filled by :mod:`lattice_flows.registry`.
REGISTRIES: dict[str, Any] = {}


def registry_of_kind(kind: str) -> Kind:
    """The registry for ``kind`` (``"actions"``, ``"flows"``, ...)."""
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise UnknownComponentError(f"unknown kind of component {kind!r}; kinds: {', '.join(REGISTRIES)}") from None

"""Exceptions a user of lattice-flows can cause, each carrying what was wrong and what was expected."""

from __future__ import annotations

__all__ = [
    "LatticeFlowsError",
    "SpecError",
    "ParameterError",
    "UnknownComponentError",
    "DuplicateComponentError",
    "ComponentLoadError",
]


class LatticeFlowsError(Exception):
    """Base class of the errors raised by lattice-flows itself."""


class SpecError(LatticeFlowsError, ValueError):
    """A simulation spec is malformed; the message names the path, e.g. ``spec['action']['beta']``."""


class ParameterError(LatticeFlowsError, ValueError):
    """A component parameter has a bad value.

    ``param`` is the parameter's name and ``reason`` what is wrong with it, so that the spec
    builder can prefix the path of the spec section: ``spec['action']['beta']: expected ...``.
    """

    def __init__(self, param: str, reason: str):
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


class UnknownComponentError(LatticeFlowsError, KeyError):
    """No plugin is registered under the requested name; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateComponentError(LatticeFlowsError):
    """Two distributions register the same name in one entry-point group."""


class ComponentLoadError(LatticeFlowsError, ImportError):
    """An entry point exists but its target cannot be imported."""

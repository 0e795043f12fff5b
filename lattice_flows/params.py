"""Typed, validated spec parameters for components (attrs fields with a help text).

A component's spec parameters are the attrs fields it declares with these helpers. They
check the type strictly (``"3.0"`` is not a number, ``True`` is not an integer) and raise
:class:`~lattice_flows.errors.ParameterError` with the bad value and what was expected, so a spec
mistake reads ``spec['action']['beta']: expected a number > 0, got -1.0``. Numbers must be finite
(NaN and +-inf are rejected) and integers fit 64 bits; a parameter with a physical upper bound states it
(``le``/``lt``) and why in its help. The help text is what ``lattice-flows --help`` and the spec
reference show.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import attrs

from .errors import ParameterError

__all__ = ["INT64_MAX", "is_size", "real", "integer", "choice", "flag", "widths", "odd_integer", "component", "injected"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float_if_number(value: Any) -> Any:
    # Converters run before validators: turn 3 into 3.0, leave anything else for the validator to reject.
    return float(value) if _is_number(value) else value


#: The largest integer a spec may give (a signed 64-bit integer: what torch, numpy and TOML hold).
INT64_MAX = 2**63 - 1


def _bounds_text(gt, ge, lt=None, le=None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt}")
    if ge is not None:
        parts.append(f">= {ge}")
    if lt is not None:
        parts.append(f"< {lt}")
    if le is not None:
        parts.append(f"<= {le}")
    return (" " + " and ".join(parts)) if parts else ""


def _check_number(kind: str, gt, ge, is_ok, lt=None, le=None, *, finite: bool = False, limit=None):
    """The validator of a number: type, then the bounds; NaN always fails, and so do +-inf with
    ``finite``; ``limit`` is an upper bound on the magnitude that every such parameter shares
    (not shown in the reference, only in the message when it is exceeded)."""

    def check(instance, attribute, value):
        expected = f"{kind}{_bounds_text(gt, ge, lt, le)}"
        if not is_ok(value):
            raise ParameterError(attribute.name, f"expected {expected}, got {value!r} ({type(value).__name__})")
        if finite and math.isinf(value):  # (NaN fails below, as "expected a number ..., got nan")
            raise ParameterError(attribute.name, f"expected a finite number{_bounds_text(gt, ge, lt, le)}, got {value!r}")
        too_small = (gt is not None and not value > gt) or (ge is not None and not value >= ge)
        too_large = (lt is not None and not value < lt) or (le is not None and not value <= le)
        if too_small or too_large or value != value:
            raise ParameterError(attribute.name, f"expected {expected}, got {value!r}")
        if limit is not None and abs(value) > limit:
            raise ParameterError(attribute.name, f"expected {expected} and at most {limit} (2**63 - 1) in size, got {value!r}")

    return check


def real(
    *,
    help: str,
    default: Any = attrs.NOTHING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    finite: bool = True,
):
    """A real-number parameter (ints are accepted and converted to float).

    NaN is always rejected; so are ``inf`` and ``-inf`` unless ``finite=False`` (no parameter needs them
    today: a value that means "no limit" is spelled 0 in its help). ``gt``, ``ge``, ``lt``, ``le``:
    bounds; give an upper bound where a larger value cannot work, and say why in ``help``.
    """
    return attrs.field(
        default=default,
        converter=_float_if_number,
        validator=_check_number("a number", gt, ge, lambda v: isinstance(v, float), lt, le, finite=finite),
        metadata={"help": help, "type": "number"},
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_size(value: Any) -> bool:
    """Whether ``value`` is an int (not a bool) from 1 to :data:`INT64_MAX`: a lattice size, a width, a count."""
    return _is_int(value) and 1 <= value <= INT64_MAX


def integer(*, help: str, default: Any = attrs.NOTHING, ge: int | None = None, lt: int | None = None, le: int | None = None):
    """An integer parameter (floats and bools are rejected); at most ``2**63 - 1`` in size (it must fit
    torch's and numpy's int64), below ``lt`` / at most ``le`` where given."""
    return attrs.field(
        default=default,
        validator=_check_number("an integer", None, ge, _is_int, lt, le, limit=INT64_MAX),
        metadata={"help": help, "type": "integer"},
    )


def choice(options: Sequence[str], *, help: str, default: Any = attrs.NOTHING):
    """A parameter that takes one of a fixed set of strings."""
    options = tuple(options)

    def check(instance, attribute, value):
        if value not in options:
            raise ParameterError(attribute.name, f"expected one of {', '.join(map(repr, options))}, got {value!r}")

    return attrs.field(default=default, validator=check, metadata={"help": help, "type": "choice", "choices": options})


def flag(*, help: str, default: bool):
    """A boolean parameter."""

    def check(instance, attribute, value):
        if not isinstance(value, bool):
            raise ParameterError(attribute.name, f"expected true or false, got {value!r} ({type(value).__name__})")

    return attrs.field(default=default, validator=check, metadata={"help": help, "type": "bool"})


def component(kind: str, *, help: str, default: Any = attrs.NOTHING):
    """A nested component, built from its own spec section by the registry of ``kind``.

    ``kind`` is a registry name: ``"integrators"``, ``"flows"``, ... The spec value is a name or a
    table with a ``name`` key and that component's parameters.
    """
    return attrs.field(default=default, metadata={"help": help, "type": "component", "component": kind})


def injected(what: str):
    """A field filled by the simulation, not by the spec: ``"action"``, ``"lattice_shape"`` or ``"flow"``.

    An observable that needs the action (``S / V``) or the lattice shape declares such a field; a
    sampler that moves through a flow's latent space declares ``injected("flow")``.
    """
    return attrs.field(metadata={"inject": what})


def _tuple_if_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def widths(*, help: str, default: Any = attrs.NOTHING):
    """A list of positive integers, such as the channel widths of hidden layers.

    Stored as a tuple (so the component stays hashable and frozen); ``to_spec`` gives back a list.
    """

    def check(instance, attribute, value):
        ok = isinstance(value, tuple) and all(is_size(v) for v in value)
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value
            raise ParameterError(attribute.name, f"expected a list of positive integers, got {shown!r}")

    return attrs.field(
        default=default, converter=_tuple_if_list, validator=check, metadata={"help": help, "type": "list of integers"}
    )


def odd_integer(*, help: str, default: Any = attrs.NOTHING):
    """A positive odd integer, such as a convolution's kernel size (odd keeps the output centred)."""

    def check(instance, attribute, value):
        if not is_size(value) or value % 2 != 1:
            raise ParameterError(attribute.name, f"expected an odd integer >= 1, got {value!r}")

    return attrs.field(default=default, validator=check, metadata={"help": help, "type": "odd integer"})

"""What every battery of the contract kit shares: the failure type, names, tolerances, lattices, test fields.

Nothing here assumes a theory: lattices come from :attr:`Action.dimensions` and
:attr:`Action.example_lattices` (and, for flows, :attr:`Flow.example_lattices` or
:meth:`Flow.check_lattice`), perturbations from :attr:`Action.period` and :meth:`Action.random_symmetry`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..base import Action
from ..registry import REGISTRIES

__all__ = [
    "ContractError", "component_name", "tolerance", "action_lattices", "test_fields", "close", "max_difference",
    "build", "generator",
]


class ContractError(AssertionError):
    """A component broke its contract: ``component`` names it, ``check`` names the check.

    An :class:`AssertionError`, so pytest reports it as a test failure; the message carries the numbers.
    """

    def __init__(self, component: str, check: str, message: str):
        self.component = component
        self.check = check
        super().__init__(f"{component}: {check}: {message}")


def component_name(obj: Any) -> str:
    """``"name (kind)"`` for a registered component class or instance, else its class's qualified name.

    >>> from lattice_flows import INTEGRATORS
    >>> component_name(INTEGRATORS.get("leapfrog"))
    'leapfrog (integrator)'
    """
    cls = obj if isinstance(obj, type) else type(obj)
    for registry in REGISTRIES.values():
        if issubclass(cls, registry.base):
            try:
                return f"{registry.name_of(cls)} ({registry.singular})"
            except LookupError:
                break
    return f"{cls.__module__}.{cls.__qualname__}"


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of round-off-level comparisons in ``dtype``: ``1e-10`` (float64), ``2e-4`` (float32)."""
    return 1e-10 if dtype == torch.float64 else 2e-4


def generator(device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def build(cls: type, params: Mapping[str, Any] | None, context: Mapping[str, Any], *, name: str | None = None):
    """``cls`` built through its ``from_spec`` from ``{**cls.example_params, **params}`` with ``context`` injected.

    Registration is not needed: a plugin's own tests may check classes they have not installed.
    """
    merged = {**cls.example_params, **(params or {})}
    return cls.from_spec(merged, name=name or cls.__name__, path="contract kit", context=context)


def _default_lattices(dimensions: Iterable[int]) -> list[tuple[int, ...]]:
    # One hypercube of side 4 and one lattice of unequal sides (3, 4, 5, ...) per number of dimensions.
    shapes: list[tuple[int, ...]] = []
    for d in dimensions:
        shapes += [(4,) * d, tuple(3 + i for i in range(d))]
    return shapes


def action_lattices(action: Action | type) -> list[tuple[int, ...]]:
    """The lattices the kit checks ``action`` on: its :attr:`~Action.example_lattices` if it declares any,
    else a side-4 hypercube and an uneven lattice (sides 3, 4, 5, ...) for each of its
    :attr:`~Action.dimensions` (1 to 3 when it declares none).

    >>> _default_lattices((1, 2))
    [(4,), (3,), (4, 4), (3, 4)]
    """
    cls = action if isinstance(action, type) else type(action)
    declared = getattr(cls, "example_lattices", ())
    if declared:
        return [tuple(int(n) for n in shape) for shape in declared]
    return _default_lattices(cls.dimensions or (1, 2, 3))


def lattice_family(bases: Sequence[Sequence[int]], factors: Sequence[int] = (1, 2, 3, 4)) -> list[tuple[int, ...]]:
    """The ``bases`` with each side multiplied by each of ``factors``, smallest volume first, without repeats."""
    shapes = set()
    for base in bases:
        for multiples in itertools.product(factors, repeat=len(base)):
            shapes.add(tuple(n * k for n, k in zip(base, multiples)))
    return sorted(shapes, key=lambda s: (math.prod(s), len(s), s))


def test_fields(action: Action, lattice_shape: Sequence[int], batch: int, seed: int, device, dtype) -> Tensor:
    """``batch`` fields from ``action``'s prior, ``(batch, *field_shape)``; if the action declares a
    :attr:`~Action.period`, each entry is moved by a random multiple ``-2 .. 2`` of it, so that the fields
    are not only canonical representatives (the action and its observables must not care)."""
    g = generator(device, seed)
    x = action.sample_prior(batch, tuple(lattice_shape), generator=g, dtype=dtype, device=device)
    period = getattr(action, "period", None)
    if period:
        x = x + period * torch.randint(-2, 3, x.shape, generator=g, device=x.device).to(dtype)
    return x


test_fields.__test__ = False  # not a pytest test, whatever imports it


def max_difference(a: Tensor, b: Tensor) -> float:
    """``max |a - b|`` as a float (in float64)."""
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def close(a: Tensor, b: Tensor, tol: float) -> bool:
    """``|a - b| <= tol * max(1, max |b|)`` everywhere (relative to the larger of 1 and ``b``'s scale)."""
    a, b = a.double(), b.double()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * scale))


def check_meta(name: str, check: str, value: Tensor, shape: tuple, dtype: torch.dtype | None, device) -> None:
    """Raise :class:`ContractError` unless ``value`` has ``shape``, ``dtype`` (if given) and ``device``'s type."""
    device = torch.device(device)
    if not isinstance(value, Tensor):
        raise ContractError(name, check, f"expected a tensor, got {type(value).__name__}")
    problems = []
    if tuple(value.shape) != tuple(shape):
        problems.append(f"shape {tuple(value.shape)}, expected {tuple(shape)}")
    if dtype is not None and value.dtype != dtype:
        problems.append(f"dtype {value.dtype}, expected {dtype}")
    if value.device.type != device.type:
        problems.append(f"device {value.device}, expected {device}")
    if problems:
        raise ContractError(name, check, "; ".join(problems))

"""The contract of an :class:`~lattice_flows.Observable`, as one function: :func:`check_observable`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..base import Action, Observable
from ._common import (
    ContractError, action_lattices, build, check_meta, close, component_name, generator, max_difference, test_fields,
    tolerance,
)
from .actions import as_action

__all__ = ["check_observable"]


def check_observable(
    observable: type,
    action: Action | type,
    *,
    params: Mapping[str, Any] | None = None,
    lattice_shapes: Sequence[Sequence[int]] | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    batch: int = 3,
) -> list[str]:
    """Check the observable class ``observable`` on the fields of ``action`` (an instance or a class).

    It is built for each lattice of ``lattice_shapes`` (default: the action's test lattices) from its
    ``example_params`` updated by ``params``, with the action and the lattice shape injected, and measured on
    ``batch`` :func:`~lattice_flows.testing.test_fields`:

    - ``theory``: its ``theory`` is the action's;
    - ``shape_device``: the values are ``(batch,)`` on ``device``;
    - ``batch_independence``: each configuration alone gives the value it has in the batch;
    - ``symmetry_invariance`` (if it declares itself ``invariant``): ``random_symmetry`` leaves the values unchanged;
    - ``period_invariance`` (if the action declares a ``period``): moving the fields by multiples of it changes nothing.

    Raises :class:`~lattice_flows.testing.ContractError`; returns the names of the checks that ran.
    """
    action = as_action(action, params=None)
    name = component_name(observable)
    device = torch.device(device)
    tol = tolerance(dtype)
    if observable.theory != action.theory:
        raise ContractError(name, "theory", f"measures {observable.theory!r} fields, but {component_name(action)} is "
                            f"a {action.theory!r} theory")
    period = getattr(action, "period", None)
    for k, shape in enumerate(tuple(s) for s in (lattice_shapes or action_lattices(action))):
        obs: Observable = build(observable, params, {"action": action, "lattice_shape": shape})
        x = test_fields(action, shape, batch, seed + k, device, dtype)
        values = obs(x)
        check_meta(name, "shape_device", values, (batch,), None, device)
        where = f"on {component_name(action)}, lattice {list(shape)}, {dtype}"
        for i in range(batch):
            alone = obs(x[i : i + 1])[0]
            if not close(alone, values[i], tol):
                raise ContractError(name, "batch_independence", f"{where}: configuration {i} alone gives {float(alone):.12g}, "
                                    f"in the batch {float(values[i]):.12g}")
        volume_tol = tol * x[0].numel()
        if observable.invariant:
            y = action.random_symmetry(x, generator(device, seed + k + 1))
            moved = obs(y)
            if not close(moved, values, volume_tol):
                raise ContractError(name, "symmetry_invariance", f"{where}: declared invariant, but random_symmetry "
                                    f"changes it by {max_difference(moved, values):.3g} (values up to "
                                    f"{float(values.abs().max()):.3g}; set invariant = False if it is not meant to be)")
        if period:
            g = generator(device, seed + k + 2)
            shifted = obs(x + period * torch.randint(-3, 4, x.shape, generator=g, device=x.device).to(dtype))
            if not close(shifted, values, volume_tol):
                raise ContractError(name, "period_invariance", f"{where}: fields moved by multiples of the period "
                                    f"{period:.6g} change it by {max_difference(shifted, values):.3g}")
    return ["theory", "shape_device", "batch_independence"] + (["symmetry_invariance"] if observable.invariant else []) + (
        ["period_invariance"] if period else []
    )

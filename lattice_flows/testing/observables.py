"""The contract of an :class:`~lattice_flows.Observable`, as one function: :func:`check_observable`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..base import Action, Observable
from ._common import (
    ContractError, action_lattices, build, check_meta, close, component_name, generator, max_difference, test_fields,
    tolerance,
)
from .actions import as_action

__all__ = ["check_observable", "observable_applies"]


def observable_applies(observable: type, action: Action | type) -> bool:
    """Whether the kit pairs ``observable`` with ``action`` (an instance or a class): same :attr:`theory`, and
    :meth:`Observable.applies_to` accepts the action (as a run's default observables and spec building do)."""
    if getattr(observable, "theory", None) != action.theory:
        return False
    applies_to = getattr(observable, "applies_to", None)
    return applies_to is None or bool(applies_to(action))


def _global_rng_states(device: torch.device) -> list[Tensor]:
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


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
    - ``applies_to``: it applies to the action (:meth:`Observable.applies_to`, asked of the action's instance and
      of its class, which must agree): pair it only with actions it applies to (:func:`observable_applies`);
    - ``shape_device``: the values are ``(batch,)`` on ``device``;
    - ``batch_independence``: each configuration alone gives the value it has in the batch;
    - ``symmetry_invariance`` (if it declares itself ``invariant``): ``random_symmetry`` leaves the values unchanged;
    - ``period_invariance`` (if the action declares a ``period``): moving the fields by multiples of it changes nothing.

    A :attr:`~Observable.stochastic` observable is called ``obs(x, generator)``; for it ``batch_independence``,
    ``symmetry_invariance`` and ``period_invariance`` (which its noise breaks configuration by configuration: they
    hold for its expectation) give way to

    - ``reproducible``: the same generator state gives the same values, bit for bit;
    - ``own_generator``: it draws from the generator it is given, never from torch's global one.

    Raises :class:`~lattice_flows.testing.ContractError`; returns the names of the checks that ran.
    """
    action = as_action(action, params=None)
    name = component_name(observable)
    device = torch.device(device)
    tol = tolerance(dtype)
    if observable.theory != action.theory:
        raise ContractError(name, "theory", f"measures {observable.theory!r} fields, but {component_name(action)} is "
                            f"a {action.theory!r} theory")
    applies_to = getattr(observable, "applies_to", None)
    if applies_to is not None:
        on_instance, on_class = bool(applies_to(action)), bool(applies_to(type(action)))
        if on_instance != on_class:
            raise ContractError(name, "applies_to", f"applies_to gives {on_instance} for the action "
                                f"{component_name(action)} and {on_class} for its class: they must agree")
        if not on_instance:
            raise ContractError(name, "applies_to", f"does not apply to {component_name(action)} (it needs "
                                f"{observable.requirement()}): pair it only with actions it applies to "
                                "(testing.observable_applies)")
    period = getattr(action, "period", None)
    stochastic = False
    for k, shape in enumerate(tuple(s) for s in (lattice_shapes or action_lattices(action))):
        obs: Observable = build(observable, params, {"action": action, "lattice_shape": shape})
        stochastic = bool(obs.stochastic)  # read on the instance: a parameter may decide (a property)
        x = test_fields(action, shape, batch, seed + k, device, dtype)
        where = f"on {component_name(action)}, lattice {list(shape)}, {dtype}"
        if stochastic:
            before = _global_rng_states(device)
            values = obs(x, generator(device, seed + k + 3))
            if any(not torch.equal(a, b) for a, b in zip(before, _global_rng_states(device))):
                raise ContractError(name, "own_generator", f"{where}: it drew from torch's global generator; a "
                                    "stochastic observable must draw only from the generator it is given")
            check_meta(name, "shape_device", values, (batch,), None, device)
            again = obs(x, generator(device, seed + k + 3))
            if not torch.equal(again, values):
                raise ContractError(name, "reproducible", f"{where}: the same generator state gives values that differ "
                                    f"by {max_difference(again, values):.3g}")
            continue
        values = obs(x)
        check_meta(name, "shape_device", values, (batch,), None, device)
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
    if stochastic:
        return ["theory", "applies_to", "shape_device", "reproducible", "own_generator"]
    return ["theory", "applies_to", "shape_device", "batch_independence"] + (
        ["symmetry_invariance"] if observable.invariant else []
    ) + (["period_invariance"] if period else [])

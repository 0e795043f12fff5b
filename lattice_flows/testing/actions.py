"""The contract of an :class:`~lattice_flows.Action`, as one function: :func:`check_action`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..base import Action
from ._common import (
    ContractError, action_lattices, build, check_meta, close, component_name, generator, max_difference, test_fields,
    tolerance,
)

__all__ = ["check_action", "as_action"]


def as_action(action: Action | type, params: Mapping[str, Any] | None = None) -> Action:
    """``action`` itself, or the action class built from ``{**example_params, **params}``."""
    if isinstance(action, type):
        return build(action, params, {})
    return action


def check_action(
    action: Action | type,
    *,
    params: Mapping[str, Any] | None = None,
    lattice_shapes: Sequence[Sequence[int]] | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    batch: int = 3,
) -> list[str]:
    """Check ``action`` (an instance, or a class built from its ``example_params`` updated by ``params``).

    On each lattice of ``lattice_shapes`` (default :func:`~lattice_flows.testing.action_lattices`), with
    ``batch`` fields from :func:`~lattice_flows.testing.test_fields` on ``device`` in ``dtype``:

    - ``field_shape``: the lattice is accepted and the prior has shape ``(batch, *field_shape)``;
    - ``shape_device_dtype``: ``S`` is ``(batch,)`` and the force has the field's shape, both in ``dtype`` on ``device``;
    - ``symmetry_invariance``: ``random_symmetry`` changes the fields and leaves ``S`` unchanged;
    - ``normalize_invariance``: ``S(normalize(x)) = S(x)``;
    - ``period_invariance`` (if the action declares a ``period``): ``S(x + period k) = S(x)`` for random integers ``k``;
    - ``batch_independence``: ``S`` and the force of each configuration alone equal those in the batch;
    - ``force_matches_autograd``: the force equals the autograd gradient of ``S``;
    - ``prior_reproducible``: the same seed gives the same prior fields; ``cold_start`` has the right shape and dtype.

    Tolerances are relative, :func:`~lattice_flows.testing.tolerance` of ``dtype`` times the number of
    field entries where sums are compared. Raises :class:`~lattice_flows.testing.ContractError` naming
    the action, the check and the numbers; returns the names of the checks that ran.
    """
    action = as_action(action, params)
    name = component_name(action)
    device = torch.device(device)
    tol = tolerance(dtype)
    shapes = [tuple(s) for s in (lattice_shapes or action_lattices(action))]
    ran: list[str] = []

    def fail(check, shape, message):
        raise ContractError(name, check, f"on lattice {list(shape)} in {dtype}: {message}")

    for k, shape in enumerate(shapes):
        try:
            field_shape = tuple(action.field_shape(shape))
        except ValueError as exc:
            fail("field_shape", shape, f"the lattice is refused ({exc}); it is one the action declares (dimensions "
                 f"{action.dimensions}, example_lattices): declare example_lattices it accepts")
        x = test_fields(action, shape, batch, seed + k, device, dtype)
        check_meta(name, "field_shape", x, (batch, *field_shape), dtype, device)
        s, f = action(x), action.force(x)
        check_meta(name, "shape_device_dtype (S)", s, (batch,), dtype, device)
        check_meta(name, "shape_device_dtype (force)", f, tuple(x.shape), dtype, device)
        volume_tol = tol * x[0].numel()

        y = action.random_symmetry(x, generator(device, seed + k + 1))
        if torch.equal(x, y):
            fail("symmetry_invariance", shape, "random_symmetry returned the fields unchanged")
        if not close(action(y), s, volume_tol):
            fail("symmetry_invariance", shape, f"S changed by {max_difference(action(y), s):.3g} under random_symmetry "
                 f"(|S| up to {float(s.abs().max()):.3g}, tolerance {volume_tol:.2g} relative)")
        normalized = action(action.normalize(x))
        if not close(normalized, s, volume_tol):
            fail("normalize_invariance", shape, f"S(normalize(x)) - S(x) = {max_difference(normalized, s):.3g}")
        period = getattr(action, "period", None)
        if period:
            g = generator(device, seed + k + 2)
            shifted = x + period * torch.randint(-3, 4, x.shape, generator=g, device=x.device).to(dtype)
            if not close(action(shifted), s, volume_tol):
                fail("period_invariance", shape, f"S(x + {period:.6g} k) - S(x) = {max_difference(action(shifted), s):.3g}")

        for i in range(batch):
            one_s, one_f = action(x[i : i + 1])[0], action.force(x[i : i + 1])[0]
            if not close(one_s, s[i], tol) or not close(one_f, f[i], tol):
                fail("batch_independence", shape, f"configuration {i} alone: S differs by {max_difference(one_s, s[i]):.3g}, "
                     f"the force by {max_difference(one_f, f[i]):.3g} from its value in the batch of {batch}")

        reference = Action.force(action, x)  # the base class's force: autograd of S
        if not close(f, reference, 10 * tol):
            fail("force_matches_autograd", shape, f"max |force - autograd| = {max_difference(f, reference):.3g} "
                 f"(|autograd| up to {float(reference.abs().max()):.3g}, tolerance {10 * tol:.2g} relative)")

        draws = [
            action.sample_prior(batch, shape, generator=generator(device, seed + 7), dtype=dtype, device=device)
            for _ in range(2)
        ]
        if not torch.equal(*draws):
            fail("prior_reproducible", shape, "two draws with the same seed differ")
        cold = action.cold_start(2, shape, dtype=dtype, device=device)
        check_meta(name, "prior_reproducible (cold_start)", cold, (2, *field_shape), dtype, device)
    ran += ["field_shape", "shape_device_dtype", "symmetry_invariance", "normalize_invariance", "batch_independence",
            "force_matches_autograd", "prior_reproducible"]
    if getattr(action, "period", None):
        ran.append("period_invariance")
    return ran

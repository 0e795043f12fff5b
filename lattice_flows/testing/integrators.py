"""The contract of an :class:`~lattice_flows.Integrator`, as one function: :func:`check_integrator`."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import attrs
import torch
from torch import Tensor

from ..base import Action, Integrator, SplitForce
from ._common import ContractError, action_lattices, build, component_name, generator, max_difference

__all__ = ["check_integrator", "anharmonic_force", "ANHARMONIC_FORCES"]


def anharmonic_force(x: Tensor) -> Tensor:
    """The force of ``S = sum(x^4/4 + 0.3 cos 2x)``: non-linear, so reversibility is not a linear accident."""
    return x**3 - 0.6 * torch.sin(2 * x)


#: The same anharmonic force, whole and as a :class:`~lattice_flows.SplitForce` (every integrator takes
#: one; multi-timescale integrators put its parts on their own scales).
ANHARMONIC_FORCES = {
    "whole": anharmonic_force,
    "split": SplitForce(slow=lambda x: x**3, fast=lambda x: -0.6 * torch.sin(2 * x)),
}

#: ``(n_steps, step_size)`` of the reversibility checks when none are given.
DEFAULT_TRAJECTORIES = ((1, 0.2), (7, 0.05), (20, 0.13))


def _harmonic(integrator: Integrator, device) -> tuple[float, float]:
    """One unit of time of ``H = (v^2 + x^2)/2`` from ``x = 0, v = 1``: ``(x(1), |energy error|)``; exact ``x(1) = sin 1``."""
    x = torch.zeros(1, 1, dtype=torch.float64, device=device)
    v = torch.ones(1, 1, dtype=torch.float64, device=device)
    x1, v1 = integrator.integrate(x, v, lambda q: q)
    return float(x1), abs(float(0.5 * (x1**2 + v1**2).sum() - 0.5))


def check_integrator(
    integrator: Integrator | type,
    *,
    params: Mapping[str, Any] | None = None,
    actions: Iterable[Action] = (),
    trajectories: Sequence[tuple[int, float]] = DEFAULT_TRAJECTORIES,
    device="cpu",
    seed: int = 0,
) -> list[str]:
    """Check ``integrator`` (an instance, or a class built from its ``example_params`` updated by ``params``).

    All in float64 on ``device`` (round-off must not hide a broken step):

    - ``reversible``: for each ``(n_steps, step_size)`` of ``trajectories`` and the anharmonic force, whole
      and as a :class:`~lattice_flows.SplitForce`, integrating from ``(x', -v')`` returns ``(x, -v)`` to
      ``1e-11``;
    - ``reversible_on_action``: the same with each of ``actions``' force on its first test lattice, momenta
      from its ``phase_space``, 25 steps, to ``1e-10``;
    - ``error_order``: on the harmonic oscillator over unit time, the energy and position errors fall as
      ``step_size**order`` (ratio within ``0.8 .. 1.25`` of ``2**order`` per halving) and ``|x(1) - sin 1| < 1e-3``;
    - ``force_evaluations``: the force is called ``force_evaluations`` times per trajectory;
    - ``inputs_unchanged``: ``integrate`` does not change its inputs in place (HMC keeps them for the Metropolis test).

    Raises :class:`~lattice_flows.testing.ContractError`; returns the names of the checks that ran.
    """
    if isinstance(integrator, type):
        integrator = build(integrator, params, {})
    name = component_name(integrator)
    device = torch.device(device)
    ran = []

    def fail(check, message):
        raise ContractError(name, check, message)

    for n_steps, step_size in trajectories:
        evolved = attrs.evolve(integrator, n_steps=n_steps, step_size=step_size)
        g = generator(device, seed + n_steps)
        x0 = torch.randn((3, 5, 4), generator=g, dtype=torch.float64, device=device)
        v0 = torch.randn((3, 5, 4), generator=g, dtype=torch.float64, device=device)
        for kind, force in ANHARMONIC_FORCES.items():
            copies = x0.clone(), v0.clone()
            x1, v1 = evolved.integrate(x0, v0, force)
            if not (torch.equal(x0, copies[0]) and torch.equal(v0, copies[1])):
                fail("inputs_unchanged", "integrate changed the (x, v) it was given in place")
            x2, v2 = evolved.integrate(x1, -v1, force)
            error = max(max_difference(x2, x0), max_difference(-v2, v0))
            if not error <= 1e-11:
                fail("reversible", f"{kind} anharmonic force, n_steps={n_steps}, step_size={step_size:g}: forward then "
                     f"back with reversed momenta misses (x, -v) by {error:.3g} > 1e-11")
    ran += ["reversible", "inputs_unchanged"]

    for action in actions:
        shape = action_lattices(action)[0]
        g = generator(device, seed + 3)
        x0 = action.sample_prior(2, shape, generator=g, dtype=torch.float64, device=device)
        v0 = action.phase_space.sample_momenta(x0, g)
        evolved = attrs.evolve(integrator, n_steps=25)
        x1, v1 = evolved.integrate(x0, v0, action.force)
        x2, v2 = evolved.integrate(x1, -v1, action.force)
        error = max(max_difference(x2, x0), max_difference(-v2, v0))
        if not error <= 1e-10:
            fail("reversible_on_action", f"on {component_name(action)}, lattice {list(shape)}, 25 steps of "
                 f"{integrator.step_size:g}: misses (x, -v) by {error:.3g} > 1e-10")
    if actions:
        ran.append("reversible_on_action")

    order = type(integrator).order
    errors, positions = [], []
    for n_steps in (10, 20, 40):
        x1, energy_error = _harmonic(attrs.evolve(integrator, step_size=1.0 / n_steps, n_steps=n_steps), device)
        errors.append(energy_error)
        positions.append(abs(x1 - math.sin(1.0)))
    for what, values in (("energy", errors), ("position", positions)):
        ratios = [coarse / fine if fine > 0 else math.inf for coarse, fine in zip(values, values[1:])]
        if not all(0.8 * 2**order < r < 1.25 * 2**order for r in ratios):
            fail("error_order", f"harmonic oscillator, 10, 20, 40 steps over unit time: {what} errors "
                 f"{', '.join(f'{e:.3g}' for e in values)} fall by {', '.join(f'{r:.3g}' for r in ratios)} per halving, "
                 f"expected about 2**order = {2**order} (order {order})")
    if not positions[-1] < 1e-3:
        fail("error_order", f"harmonic oscillator, 40 steps: |x(1) - sin 1| = {positions[-1]:.3g} >= 1e-3")
    ran.append("error_order")

    calls = []

    def counting_force(x):
        calls.append(1)
        return x

    counted = attrs.evolve(integrator, n_steps=7)
    x = torch.zeros(1, 2, dtype=torch.float64, device=device)
    counted.integrate(x, torch.ones_like(x), counting_force)
    if len(calls) != counted.force_evaluations:
        fail("force_evaluations", f"7 steps called the force {len(calls)} times; force_evaluations says {counted.force_evaluations}")
    ran.append("force_evaluations")
    return ran

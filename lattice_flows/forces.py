"""Forces for molecular dynamics: ``dS/dx`` by autograd, and a force split into time scales.

A force is a callable ``force(x) -> F`` with ``x`` of shape ``(B, *field_shape)`` and ``F`` in the
momentum coordinates of the action's phase space (:mod:`lattice_flows.phase_space`): ``dS/dx``, of the
field's shape, on a flat space; the derivative along the Lie algebra's generators on a group.

:class:`SplitForce` writes a force as a sum of parts, one per time scale, coarsest first, for the
multi-timescale integrators (``nested_leapfrog``); calling it gives the sum, so every integrator
accepts it. This module imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import Tensor

__all__ = ["autograd_force", "SplitForce", "force_levels"]

Force = Callable[[Tensor], Tensor]


def autograd_force(action: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``d action(x).sum() / dx`` by autograd (even inside ``no_grad``), same shape as ``x``, detached."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(action(x).sum(), x)
    return grad


@attrs.frozen(init=False)
class SplitForce:
    """A force ``dS/dx`` written as the sum of its parts on several time scales, coarsest first.

    ``SplitForce(slow=a, fast=b)`` (or ``SplitForce(a, b)``) is two scales; ``SplitForce(a, b, c)``
    three, ``c`` on the finest. Calling it gives the sum, so every integrator accepts it; a nested
    integrator (``nested_leapfrog``) integrates each part with its own step, finer for later parts.
    Which part goes on a fine scale is the sampler's choice: the stiff part, or the cheap one.

    >>> f = SplitForce(lambda x: x, lambda x: 2 * x, lambda x: 3 * x)
    >>> len(f.levels), float(f(torch.ones(1))[0])
    (3, 6.0)
    >>> SplitForce(slow=abs, fast=abs).fast is abs
    True
    """

    #: The parts, coarsest (slowest) first; at least two.
    levels: tuple[Force, ...]

    def __init__(self, *levels: Force, slow: Force | None = None, fast: Force | None = None):
        if slow is not None or fast is not None:
            if levels or slow is None or fast is None:
                raise TypeError("SplitForce: give the parts either as SplitForce(slow=..., fast=...) or positionally, coarsest first")
            levels = (slow, fast)
        if len(levels) < 2:
            raise ValueError(f"SplitForce: expected at least two parts (one per time scale), got {len(levels)}")
        for i, part in enumerate(levels):
            if not callable(part):
                raise TypeError(f"SplitForce: part {i} is {part!r}, expected a callable force(x)")
        self.__attrs_init__(levels=tuple(levels))

    @property
    def slow(self) -> Force:
        """The coarsest part."""
        return self.levels[0]

    @property
    def fast(self) -> Force:
        """Everything finer than :attr:`slow`: the finest part of two, else a :class:`SplitForce` of the rest."""
        return self.levels[1] if len(self.levels) == 2 else SplitForce(*self.levels[1:])

    def __call__(self, x: Tensor) -> Tensor:
        total = self.levels[0](x) + self.levels[1](x)
        for part in self.levels[2:]:
            total = total + part(x)
        return total


def force_levels(force: Force) -> tuple[Force, ...]:
    """The parts of ``force``, coarsest first: its ``levels`` for a :class:`SplitForce`, else ``(force,)``."""
    return force.levels if isinstance(force, SplitForce) else (force,)

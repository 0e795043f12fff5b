"""Symmetric splitting integrators as palindromic coefficient lists fed to one stepper.

A step is ``v -= b_1 eps F(x); x += a_1 eps v; v -= b_2 eps F(x); ...`` with coefficients
``(b_1, a_1, b_2, a_2, ..., b_1)`` read alternately as momentum and position updates. A palindrome
makes the step time-reversible; the last momentum update of one step and the first of the next use
the same force, so consecutive steps share one force evaluation.

Every position update goes through the phase space handed to ``integrate`` (the action's, see
:mod:`lattice_flows.phase_space`): ``x += c eps v`` is ``phase_space.update_position(x, v, c eps)``,
which on a group is ``U <- exp(c eps v) U``. The default, :data:`lattice_flows.phase_space.FLAT`, does
exactly ``x.add_(v, alpha=c eps)``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import attrs
from torch import Tensor

from lattice_flows import Integrator
from lattice_flows.errors import ParameterError
from lattice_flows.forces import SplitForce, force_levels
from lattice_flows.params import is_size, real
from lattice_flows.phase_space import FLAT, PhaseSpace

__all__ = ["SplittingIntegrator", "Leapfrog", "Omelyan", "NestedLeapfrog"]


@attrs.frozen(kw_only=True)
class SplittingIntegrator(Integrator):
    """Generic stepper for a palindromic coefficient list (see the module docstring)."""

    @property
    def coefficients(self) -> tuple[float, ...]:
        """``(b_1, a_1, b_2, ..., b_1)``: odd length, palindromic, momentum coefficients first."""
        raise NotImplementedError

    @property
    def force_evaluations(self) -> int:
        n_momentum = (len(self.coefficients) + 1) // 2
        return self.n_steps * (n_momentum - 1) + 1

    def integrate(
        self, x: Tensor, v: Tensor, force: Callable[[Tensor], Tensor], phase_space: PhaseSpace = FLAT
    ) -> tuple[Tensor, Tensor]:
        eps = self.step_size
        coefficients = self.coefficients
        # Updates run in place on private copies: the caller keeps (x, v) for the Metropolis test.
        x, v = x.clone(), v.clone()
        f = force(x)
        for _ in range(self.n_steps):
            for i, c in enumerate(coefficients):
                if i % 2 == 0:  # momentum update with the force at the current x
                    v.sub_(f, alpha=c * eps)
                else:
                    x = phase_space.update_position(x, v, c * eps)
                    f = force(x)
        return x, v


@attrs.frozen(kw_only=True)
class Leapfrog(SplittingIntegrator):
    """Velocity Verlet / leapfrog: ``(1/2, 1, 1/2)``; ``n_steps + 1`` force evaluations per trajectory."""

    example_params: ClassVar[dict] = {"step_size": 0.1, "n_steps": 10}

    @property
    def coefficients(self) -> tuple[float, ...]:
        return (0.5, 1.0, 0.5)


@attrs.frozen(kw_only=True)
class Omelyan(SplittingIntegrator):
    """Omelyan's second-order minimum-norm integrator (2MN): ``(lambda, 1/2, 1 - 2 lambda, 1/2, lambda)``.

    Two force evaluations per step, with an energy error several times smaller than leapfrog's at
    equal cost (Omelyan, Mryglod, Folk, Comput. Phys. Commun. 151 (2003) 272; ``lambda ≈ 0.1932``).
    """

    example_params: ClassVar[dict] = {"step_size": 0.2, "n_steps": 5}

    lam: float = real(
        help="splitting parameter lambda (0.1932 minimises the error norm)", default=0.1931833275037836, gt=0.0, lt=0.5
    )

    @property
    def coefficients(self) -> tuple[float, ...]:
        return (self.lam, 0.5, 1.0 - 2.0 * self.lam, 0.5, self.lam)


def _inner_steps(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_inner_steps(instance, attribute, value) -> None:
    if isinstance(value, tuple):
        if value and all(is_size(n) for n in value):
            return
        raise ParameterError(attribute.name, f"expected a non-empty list of integers >= 1 (one per inner level), got {list(value)!r}")
    if not is_size(value):
        raise ParameterError(attribute.name, f"expected an integer >= 1 or a list of them (one per inner level), got {value!r}")


@attrs.frozen(kw_only=True)
class NestedLeapfrog(Integrator):
    """Multi-timescale leapfrog (Sexton and Weingarten, Nucl. Phys. B 380 (1992) 665), any number of levels.

    For ``force = SplitForce(F_0, F_1, ..., F_{L-1})`` (coarsest first) level ``0`` takes ``n_steps`` steps of
    ``h_0 = step_size``, and one step of level ``k`` of size ``h_k`` is

        v -= h_k/2 F_k(x);  n_k steps of level k+1, of size h_{k+1} = h_k / n_k;  v -= h_k/2 F_k(x)

    with the finest level's inner part ``x <- update_position(x, v, h_{L-1})``. ``n_inner`` is one ``n_k``
    for every inner level (an integer) or a list, one entry per inner level (``L - 1`` entries). With two
    levels, ``SplitForce(slow, fast)``, that is: ``v -= eps/2 slow(x)``; ``n_inner`` leapfrog steps of size
    ``eps/n_inner`` with ``fast``; ``v -= eps/2 slow(x)``. Level ``k`` evaluates its force (number of level-k
    steps) + 1 times per trajectory (consecutive half steps share it, :meth:`level_force_evaluations`).
    Symmetric, hence reversible and area-preserving.

    A force of fewer parts than levels fills the finest ones: a force that is not split is all on the
    finest level (with two levels, a leapfrog of ``n_steps * n_inner`` steps of size ``step_size / n_inner``).
    An integer ``n_inner`` makes as many levels as the force has parts (at least two); a list fixes the
    number of levels, and a force of more parts than that is an error.
    """

    example_params: ClassVar[dict] = {"step_size": 0.2, "n_steps": 5, "n_inner": 3}

    n_inner: int | tuple[int, ...] = attrs.field(
        default=4,
        converter=_inner_steps,
        validator=_check_inner_steps,
        metadata={
            "help": (
                "inner steps per step of the next coarser level: an integer for every inner level, or a list "
                "with one entry (each >= 1) per inner level, coarsest first (three levels: two entries)"
            ),
            "type": "integer or list of integers",
        },
    )

    def inner_steps(self, n_levels: int = 2) -> tuple[int, ...]:
        """``(n_0, ..., n_{L-2})``: the inner steps of each inner level for ``n_levels`` levels (an integer
        ``n_inner`` repeated; a list as given, whose length must then be ``n_levels - 1``)."""
        if isinstance(self.n_inner, tuple):
            if len(self.n_inner) != n_levels - 1:
                raise ValueError(
                    f"nested_leapfrog: n_inner = {list(self.n_inner)} makes {len(self.n_inner) + 1} levels, asked for {n_levels}"
                )
            return self.n_inner
        return (self.n_inner,) * (n_levels - 1)

    @property
    def n_levels(self) -> int:
        """The number of time scales a list ``n_inner`` fixes; 2 for an integer (more if the force has more parts)."""
        return len(self.n_inner) + 1 if isinstance(self.n_inner, tuple) else 2

    def level_force_evaluations(self, n_levels: int | None = None) -> tuple[int, ...]:
        """Evaluations of each level's force per trajectory, coarsest first: ``steps_k + 1`` with
        ``steps_0 = n_steps`` and ``steps_{k+1} = steps_k n_k``."""
        n_levels = self.n_levels if n_levels is None else n_levels
        counts, steps = [], self.n_steps
        for n in (1, *self.inner_steps(n_levels)):
            steps *= n
            counts.append(steps + 1)
        return tuple(counts)

    @property
    def force_evaluations(self) -> int:
        """Evaluations of an unsplit force, or of the finest part of a split one."""
        return self.level_force_evaluations()[-1]

    @property
    def slow_force_evaluations(self) -> int:
        """Evaluations of the coarsest part of a :class:`SplitForce`."""
        return self.n_steps + 1

    def _levels(self, force: Callable[[Tensor], Tensor]) -> tuple[list, tuple[int, ...]]:
        """The force of every level (None where a level has none) and the inner steps."""
        parts = force_levels(force)
        if isinstance(self.n_inner, tuple):
            n_levels = len(self.n_inner) + 1
            if len(parts) > n_levels:
                raise ValueError(
                    f"nested_leapfrog: the force has {len(parts)} parts but n_inner = {list(self.n_inner)} makes "
                    f"{n_levels} levels; give n_inner {len(parts) - 1} entries"
                )
        else:
            n_levels = max(2, len(parts))
        return [None] * (n_levels - len(parts)) + list(parts), self.inner_steps(n_levels)

    def integrate(
        self, x: Tensor, v: Tensor, force: Callable[[Tensor], Tensor], phase_space: PhaseSpace = FLAT
    ) -> tuple[Tensor, Tensor]:
        forces, inner = self._levels(force)
        finest = len(forces) - 1
        sizes = [self.step_size]
        for n in inner:
            sizes.append(sizes[-1] / n)
        x, v = x.clone(), v.clone()
        f = [part(x) if part is not None else None for part in forces]  # each level's force at the current x

        def step(level: int) -> None:
            nonlocal x, v
            h = sizes[level]
            if f[level] is not None:
                v.sub_(f[level], alpha=0.5 * h)
            if level == finest:
                x = phase_space.update_position(x, v, h)
            else:
                for _ in range(inner[level]):
                    step(level + 1)
            if forces[level] is not None:
                f[level] = forces[level](x)
                v.sub_(f[level], alpha=0.5 * h)

        for _ in range(self.n_steps):
            step(0)
        return x, v

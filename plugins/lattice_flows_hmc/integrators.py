"""Symmetric splitting integrators as palindromic coefficient lists fed to one stepper.

A step is ``v -= b_1 eps F(x); x += a_1 eps v; v -= b_2 eps F(x); ...`` with coefficients
``(b_1, a_1, b_2, a_2, ..., b_1)`` read alternately as momentum and position updates. A palindrome
makes the step time-reversible; the last momentum update of one step and the first of the next use
the same force, so consecutive steps share one force evaluation.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import attrs
from torch import Tensor

from lattice_flows import Integrator, SplitForce
from lattice_flows.params import integer, real

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

    def integrate(self, x: Tensor, v: Tensor, force: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
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
                    x.add_(v, alpha=c * eps)
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


@attrs.frozen(kw_only=True)
class NestedLeapfrog(Integrator):
    """Two-timescale leapfrog (Sexton and Weingarten, Nucl. Phys. B 380 (1992) 665).

    For ``force = SplitForce(slow, fast)`` one outer step of size ``eps`` is

        v -= eps/2 slow(x);  n_inner leapfrog steps of size eps/n_inner with fast;  v -= eps/2 slow(x)

    so ``slow`` is evaluated ``n_steps + 1`` times and ``fast`` ``n_steps * n_inner + 1`` times per
    trajectory (consecutive half steps share their force). Symmetric, hence reversible and
    area-preserving. A force that is not split is all ``fast``: the integrator is then a leapfrog of
    ``n_steps * n_inner`` steps of size ``step_size / n_inner``.
    """

    example_params: ClassVar[dict] = {"step_size": 0.2, "n_steps": 5, "n_inner": 3}

    n_inner: int = integer(help="inner leapfrog steps of the fast force per outer step", default=4, ge=1)

    @property
    def force_evaluations(self) -> int:
        """Evaluations of an unsplit force, or of the fast part of a split one."""
        return self.n_steps * self.n_inner + 1

    @property
    def slow_force_evaluations(self) -> int:
        """Evaluations of the slow part of a :class:`SplitForce`."""
        return self.n_steps + 1

    def integrate(self, x: Tensor, v: Tensor, force: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        slow, fast = (force.slow, force.fast) if isinstance(force, SplitForce) else (None, force)
        eps, h = self.step_size, self.step_size / self.n_inner
        x, v = x.clone(), v.clone()
        f_slow = slow(x) if slow is not None else None
        f_fast = fast(x)
        for _ in range(self.n_steps):
            if slow is not None:
                v.sub_(f_slow, alpha=0.5 * eps)
            for _ in range(self.n_inner):
                v.sub_(f_fast, alpha=0.5 * h)
                x.add_(v, alpha=h)
                f_fast = fast(x)
                v.sub_(f_fast, alpha=0.5 * h)
            if slow is not None:
                f_slow = slow(x)
                v.sub_(f_slow, alpha=0.5 * eps)
        return x, v

"""The two-timescale leapfrog: what it reduces to, how often it calls each force, its order."""

from __future__ import annotations

import torch

from lattice_flows import SplitForce
from lattice_flows_hmc.integrators import Leapfrog, NestedLeapfrog


def _anharmonic_split():
    return SplitForce(slow=lambda x: x**3, fast=lambda x: -0.6 * torch.sin(2 * x) + 4.0 * x)


def _start(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)


def test_one_inner_step_is_leapfrog_on_the_sum():
    force = _anharmonic_split()
    x0, v0 = _start()
    a = NestedLeapfrog(step_size=0.05, n_steps=12, n_inner=1).integrate(x0, v0, force)
    b = Leapfrog(step_size=0.05, n_steps=12).integrate(x0, v0, force)
    for p, q in zip(a, b):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_an_unsplit_force_is_all_fast():
    split = _anharmonic_split()

    def force(x):  # a plain callable, not a SplitForce
        return split(x)

    x0, v0 = _start(1)
    a = NestedLeapfrog(step_size=0.3, n_steps=4, n_inner=5).integrate(x0, v0, force)
    b = Leapfrog(step_size=0.3 / 5, n_steps=20).integrate(x0, v0, force)
    for p, q in zip(a, b):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_counts_slow_and_fast_evaluations():
    calls = {"slow": 0, "fast": 0}

    def counted(part, f):
        def force(x):
            calls[part] += 1
            return f(x)

        return force

    integrator = NestedLeapfrog(step_size=0.1, n_steps=6, n_inner=4)
    x0, v0 = _start()
    integrator.integrate(x0, v0, SplitForce(slow=counted("slow", lambda x: x), fast=counted("fast", lambda x: x)))
    assert calls == {"slow": integrator.slow_force_evaluations, "fast": integrator.force_evaluations}
    assert calls == {"slow": 7, "fast": 25}


def test_fine_steps_shrink_the_error_of_a_stiff_fast_force():
    # H = v^2/2 + (x^2 + omega^2 x^2)/2 with a stiff fast part (omega = 6): at an outer step where
    # plain leapfrog on the sum is close to its stability limit, inner steps cut the energy error.
    omega2 = 36.0
    force = SplitForce(slow=lambda x: x, fast=lambda x: omega2 * x)
    x0, v0 = _start(2)

    def energy(x, v):
        return 0.5 * (v**2 + (1 + omega2) * x**2).sum()

    def error(n_inner):
        x1, v1 = NestedLeapfrog(step_size=0.25, n_steps=4, n_inner=n_inner).integrate(x0, v0, force)
        return abs(float(energy(x1, v1) - energy(x0, v0)))

    errors = [error(n) for n in (1, 4, 16)]
    assert errors[0] > 10 * errors[1] > 10 * errors[2] * 0.5
    # With a fine inner scale, the error is second order in the outer step.
    def outer(eps):
        x1, v1 = NestedLeapfrog(step_size=eps, n_steps=round(1.0 / eps), n_inner=20).integrate(x0, v0, force)
        return abs(float(energy(x1, v1) - energy(x0, v0)))

    ratio = outer(0.1) / outer(0.05)
    assert 2.5 < ratio < 6.0

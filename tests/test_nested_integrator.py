"""The multi-timescale leapfrog: what it reduces to, how often it calls each force, its order; any number of levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hamiltonian_toys
from exact_checks import PULL
from hamiltonian_toys import ThreeScaleGaussian
from lattice_flows import Simulation, SplitForce, analysis
from lattice_flows.errors import ParameterError
from lattice_flows_hmc.hmc import HMC
from lattice_flows_hmc.integrators import Leapfrog, NestedLeapfrog


@pytest.fixture
def hamiltonian_toys_registered(fake_entry_points):
    fake_entry_points.update(hamiltonian_toys.entry_points())


def _anharmonic_split():
    return SplitForce(slow=lambda x: x**3, fast=lambda x: -0.6 * torch.sin(2 * x) + 4.0 * x)


def _start(seed=0, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(3, 4, generator=g, dtype=torch.float64, device=device) for _ in range(2))


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


# -- any number of levels ------------------------------------------------------------------------------------


def _three_levels():
    return SplitForce(lambda x: 0.5 * x**3, lambda x: -0.6 * torch.sin(2 * x) + 4.0 * x, lambda x: 25.0 * x)


def _old_two_level(integrator, x, v, force):
    """The two-level algorithm as it was before levels were generalized, for a bit-for-bit comparison."""
    slow, fast = (force.slow, force.fast) if isinstance(force, SplitForce) else (None, force)
    eps, h = integrator.step_size, integrator.step_size / integrator.n_inner
    x, v = x.clone(), v.clone()
    f_slow = slow(x) if slow is not None else None
    f_fast = fast(x)
    for _ in range(integrator.n_steps):
        if slow is not None:
            v.sub_(f_slow, alpha=0.5 * eps)
        for _ in range(integrator.n_inner):
            v.sub_(f_fast, alpha=0.5 * h)
            x.add_(v, alpha=h)
            f_fast = fast(x)
            v.sub_(f_fast, alpha=0.5 * h)
        if slow is not None:
            f_slow = slow(x)
            v.sub_(f_slow, alpha=0.5 * eps)
    return x, v


def test_two_levels_are_bit_for_bit_the_old_algorithm_and_a_list_of_one_is_the_integer():
    x0, v0 = _start(4)
    for force in (_anharmonic_split(), _anharmonic_split().slow):
        integrator = NestedLeapfrog(step_size=0.17, n_steps=5, n_inner=3)
        new = integrator.integrate(x0, v0, force)
        old = _old_two_level(integrator, x0, v0, force)
        as_list = NestedLeapfrog(step_size=0.17, n_steps=5, n_inner=[3]).integrate(x0, v0, force)
        assert all(torch.equal(a, b) for a, b in zip(new, old))
        assert all(torch.equal(a, b) for a, b in zip(new, as_list))


def test_split_force_keeps_its_two_part_spelling():
    slow, fast = (lambda x: x), (lambda x: 2 * x)
    two = SplitForce(slow=slow, fast=fast)
    assert two.levels == (slow, fast) and two.slow is slow and two.fast is fast
    assert SplitForce(slow, fast) == two
    three = SplitForce(slow, fast, slow)
    assert three.slow is slow and three.fast.levels == (fast, slow)
    assert float(three(torch.ones(1))[0]) == 4.0
    with pytest.raises(ValueError, match="at least two parts"):
        SplitForce(slow)
    with pytest.raises(TypeError, match="part 1 is 3"):
        SplitForce(slow, 3)


@pytest.mark.parametrize("n_inner", [[2, 3], 2])
def test_three_levels_are_reversible(n_inner, device):
    x0, v0 = _start(5, device)
    integrator = NestedLeapfrog(step_size=0.2, n_steps=5, n_inner=n_inner)
    x1, v1 = integrator.integrate(x0, v0, _three_levels())
    x2, v2 = integrator.integrate(x1, -v1, _three_levels())
    assert not torch.allclose(x1, x0, atol=1e-2)
    assert torch.allclose(x2, x0, rtol=0, atol=1e-12) and torch.allclose(-v2, v0, rtol=0, atol=1e-12)


def test_three_levels_preserve_phase_space_volume():
    x0, v0 = _start(6)
    z0 = torch.cat([x0[0, :2], v0[0, :2]])
    integrator = NestedLeapfrog(step_size=0.3, n_steps=3, n_inner=[2, 3])

    def flow(z):
        x1, v1 = integrator.integrate(z[:2].view(1, 2), z[2:].view(1, 2), _three_levels())
        return torch.cat([x1.reshape(-1), v1.reshape(-1)])

    h = 1e-5  # central differences (the integrators update in place, which autograd cannot follow)
    columns = [(flow(z0 + h * e) - flow(z0 - h * e)) / (2 * h) for e in torch.eye(4, dtype=torch.float64)]
    jacobian = torch.stack(columns, dim=1)
    assert not torch.allclose(jacobian, torch.eye(4, dtype=torch.float64), atol=1e-2)
    assert abs(float(torch.linalg.det(jacobian)) - 1.0) < 1e-8


def test_counts_the_evaluations_of_every_level():
    calls = [0, 0, 0]

    def counted(level, f):
        def force(x):
            calls[level] += 1
            return f(x)

        return force

    x0, v0 = _start()
    for n_inner, expected in (([2, 3], (7, 13, 37)), (4, (7, 25, 97))):
        calls[:] = [0, 0, 0]
        integrator = NestedLeapfrog(step_size=0.1, n_steps=6, n_inner=n_inner)
        force = SplitForce(*(counted(k, f) for k, f in enumerate(_three_levels().levels)))
        integrator.integrate(x0, v0, force)
        assert tuple(calls) == integrator.level_force_evaluations(3) == expected
    # a two-part force on three levels fills the two finest: the coarsest only nests
    calls[:] = [0, 0, 0]
    integrator = NestedLeapfrog(step_size=0.1, n_steps=6, n_inner=[2, 3])
    integrator.integrate(x0, v0, SplitForce(counted(1, lambda x: x), counted(2, lambda x: x)))
    assert tuple(calls) == (0, 13, 37) and integrator.force_evaluations == 37 and integrator.slow_force_evaluations == 7


def test_energy_error_is_second_order_in_the_outer_step():
    # H = v^2/2 + (k_0 + k_1 + k_2) x^2/2 with a stiff finest part: with fine inner levels the error falls as eps^2
    force = SplitForce(lambda x: x, lambda x: 9.0 * x, lambda x: 100.0 * x)
    x0, v0 = _start(2)

    def error(eps):
        x1, v1 = NestedLeapfrog(step_size=eps, n_steps=round(1.0 / eps), n_inner=[3, 8]).integrate(x0, v0, force)
        return abs(float(0.5 * (v1**2 + 110.0 * x1**2).sum() - 0.5 * (v0**2 + 110.0 * x0**2).sum()))

    ratio = error(0.1) / error(0.05)
    assert 2.5 < ratio < 6.0, ratio


def test_bad_levels_are_refused_with_the_values():
    with pytest.raises(ParameterError, match=r"n_inner.*got \[2, 0\]"):
        NestedLeapfrog(step_size=0.1, n_steps=2, n_inner=[2, 0])
    with pytest.raises(ParameterError, match=r"n_inner.*got \[\]"):
        NestedLeapfrog(step_size=0.1, n_steps=2, n_inner=[])
    with pytest.raises(ParameterError, match="n_inner.*got 1.5"):
        NestedLeapfrog(step_size=0.1, n_steps=2, n_inner=1.5)
    x0, v0 = _start()
    with pytest.raises(ValueError, match=r"3 parts but n_inner = \[2\] makes 2 levels"):
        NestedLeapfrog(step_size=0.1, n_steps=2, n_inner=[2]).integrate(x0, v0, _three_levels())


def test_spec_round_trip_keeps_an_integer_an_integer(hamiltonian_toys_registered):
    for n_inner in (3, [2, 3]):
        sim = Simulation.from_spec({
            "lattice": {"shape": [4]}, "action": {"name": "su2_toy", "beta": 1.0}, "observables": ["su2_a0"],
            "sampler": {"name": "hmc", "integrator": {"name": "nested_leapfrog", "step_size": 0.2, "n_steps": 2, "n_inner": n_inner}},
        })
        assert sim.to_spec()["sampler"]["integrator"]["n_inner"] == n_inner


def test_three_level_hmc_is_exact_on_a_gaussian():
    # <x^2> = 1/110, frequency sqrt(110); a trajectory of 1.11 is not close to a multiple of the half period
    action = ThreeScaleGaussian(k=(1.0, 9.0, 100.0))
    sampler = HMC(integrator=NestedLeapfrog(step_size=0.37, n_steps=3, n_inner=[3, 4]))
    g = torch.Generator().manual_seed(3)
    state = sampler.init(action.sample_prior(16, (3,), generator=g, dtype=torch.float64, device="cpu") / 10, action)
    xs, weights = [], []
    for i in range(320):
        state, info = sampler.step(state, action, g)
        if i >= 20:
            xs.append(state.x.square().mean(1).numpy())
            weights.append(torch.exp(-info["delta_H"]).numpy())
    result = analysis.gamma_method(np.stack(xs, axis=1))
    assert result.error < 0.05 / 110
    assert abs(result.mean - 1 / 110) < PULL * result.error, (result.mean * 110, result.error * 110)
    result = analysis.gamma_method(np.stack(weights, axis=1))
    assert abs(result.mean - 1) < PULL * result.error and result.error < 0.05

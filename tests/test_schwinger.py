"""The two-flavour Schwinger model's operator, solver and actions (plugins/lattice_flows_schwinger).

Checks against exact statements that do not use our samplers: gamma_5-hermiticity, a real determinant,
gauge covariance, the free spectrum against the momentum-space formula, the pseudofermion force against
autograd of a dense ``phi^dag (D^dag D)^{-1} phi``, and its average over pseudofermions against autograd of
``-log det(D^dag D)`` (within standard errors). The statistical checks against the exact reweighting
reference are in tests/test_schwinger_exact.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import lattice_flows as lf
from lattice_flows.errors import SpecError
from lattice_flows.forces import autograd_force
from lattice_flows_schwinger.action import PseudofermionDynamics, SchwingerDeterminant, SchwingerPseudofermion
from lattice_flows_schwinger.cg import CGNotConverged, conjugate_gradient
from lattice_flows_schwinger.dirac import (
    apply_dirac,
    apply_dirac_dagger,
    apply_normal,
    complex_dtype,
    dense_dirac,
    free_spectrum,
    gamma5,
    log_det_normal,
    sort_complex,
)
from lattice_flows_u1.geometry import gauge_transform

SHAPE = (4, 6)  # uneven, so the two directions (antiperiodic, periodic) cannot be confused


def rough_links(n, shape=SHAPE, *, scale=1.0, seed=0, device="cpu", dtype=torch.float64):
    """Link angles ``(n, 2, L_0, L_1)``: uniform in ``[-pi, pi)`` times ``scale``."""
    g = torch.Generator(device=device).manual_seed(seed)
    return scale * (2 * math.pi * torch.rand((n, 2, *shape), generator=g, device=device, dtype=dtype) - math.pi)


def random_spinor(x, seed=1):
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(x.shape, generator=g, dtype=complex_dtype(x.dtype), device=x.device)


def test_gamma5_hermiticity_and_a_real_determinant():
    x = rough_links(2)
    d = dense_dirac(x, 0.1)
    n = d.shape[-1]
    g5 = torch.diag(gamma5(torch.ones((1, *x.shape[1:]), dtype=d.dtype)).reshape(n))
    assert torch.allclose(g5 @ d @ g5, d.conj().transpose(1, 2), atol=1e-14)
    det = torch.linalg.det(d)
    assert (det.imag.abs() <= 1e-10 * det.abs()).all(), det
    # and the matrix-free D^dag is that of the dense matrix
    psi = random_spinor(x)
    dag = torch.einsum("bji,bj->bi", d.conj(), psi.reshape(2, n)).reshape(psi.shape)
    assert torch.allclose(apply_dirac_dagger(x, psi, 0.1), dag, atol=1e-13)


def test_gauge_covariance(device, dtype, tol):
    x = rough_links(2, device=device, dtype=dtype)
    a = rough_links(2, seed=5, device=device, dtype=dtype)[:, 0]  # site angles (B, L_0, L_1)
    g = torch.polar(torch.ones_like(a), a).unsqueeze(1)  # g(n) = exp(i a(n)), on both spin components
    psi = random_spinor(x)
    xg = gauge_transform(x, a)  # U_mu(n) -> g(n) U_mu(n) conj(g(n + e_mu))
    # D[U^g] = G D[U] G^dag, so D[U^g] (g psi) = g (D[U] psi)
    assert torch.allclose(apply_dirac(xg, g * psi, 0.2), g * apply_dirac(x, psi, 0.2), atol=50 * tol)
    if dtype == torch.float64:
        assert torch.allclose(log_det_normal(xg, 0.2), log_det_normal(x, 0.2), atol=1e-9)


def test_free_spectrum_against_the_momentum_space_formula():
    for shape, mass in (((4, 6), 0.1), ((3, 4), -0.3)):
        x = torch.zeros((1, 2, *shape), dtype=torch.float64)
        eigenvalues = sort_complex(torch.linalg.eigvals(dense_dirac(x, mass)[0]))
        assert torch.allclose(eigenvalues, free_spectrum(shape, mass), atol=1e-12)
    # antiperiodic in direction 0: the smallest |p_0| is pi / L_0, so no eigenvalue is m itself
    x = torch.zeros((1, 2, 4, 6), dtype=torch.float64)
    assert (torch.linalg.eigvals(dense_dirac(x, 0.1)[0]) - 0.1).abs().min() > 0.1


def test_the_boundary_conditions_are_antiperiodic_in_direction_0_only():
    """``D`` on a constant spinor of the free field: translation invariant in direction 1 (periodic), and in
    direction 0 away from its boundary; the rows next to that boundary differ (the hop across it has a -1)."""
    x = torch.zeros((1, 2, 4, 6), dtype=torch.float64)
    psi = torch.zeros(x.shape, dtype=torch.complex128)
    psi[:, 0] = 1.0  # upper spin component 1 everywhere
    out = apply_dirac(x, psi, 0.0)
    interior = out[:, :, 1:-1]  # rows n_0 = 1 .. L_0 - 2 feel no boundary: they repeat
    assert torch.allclose(interior, interior[:, :, :1].expand_as(interior))
    # rows at the boundary of direction 0 differ from the interior; every row is the same along direction 1
    assert not torch.allclose(out[:, :, 0], out[:, :, 1])
    assert torch.allclose(out, out[..., :1].expand_as(out))


def test_cg_converges_each_chain_to_its_own_tolerance(device, dtype):
    x = rough_links(3, scale=0.6, device=device, dtype=dtype)
    x[2] = 0.0  # the free field converges much faster than the rough ones
    b = random_spinor(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    result = conjugate_gradient(lambda v: apply_normal(x, v, 0.1), b, tol=tol, max_iter=2000)
    residual = (b - apply_normal(x, result.x, 0.1)).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
    assert (residual <= 5 * tol).all(), residual
    assert result.iterations[2] < result.iterations[:2].min()
    assert result.x.dtype == b.dtype and result.x.device == b.device


def test_cg_zero_source_and_a_chain_that_does_not_converge_is_an_error():
    x = rough_links(3, scale=0.6)
    b = random_spinor(x)
    b[1] = 0.0
    result = conjugate_gradient(lambda v: apply_normal(x, v, 0.1), b, tol=1e-10, max_iter=1000)
    assert result.iterations[1] == 0 and bool((result.x[1] == 0).all())
    with pytest.raises(CGNotConverged, match=r"did not converge in 5 iterations for 2 chain\(s\).*cg_max_iter") as info:
        conjugate_gradient(lambda v: apply_normal(x, v, 0.1), b, tol=1e-10, max_iter=5, what="a test")
    assert info.value.chains == [0, 2]


def dense_fermion_action(x, phi, mass):
    """``phi^dag (D^dag D)^{-1} phi`` by a dense solve, differentiable in ``x``."""
    d = dense_dirac(x, mass)
    m = d.conj().transpose(1, 2) @ d
    flat = phi.reshape(phi.shape[0], -1)
    return (flat.conj() * torch.linalg.solve(m, flat)).real.sum(1)


def test_the_pseudofermion_force_against_autograd_of_the_dense_action():
    action = SchwingerPseudofermion(beta=2.0, mass=0.15)
    x = rough_links(3, scale=0.7)
    dynamics = action.refresh(x, torch.Generator().manual_seed(3))
    expected = autograd_force(lambda y: action.gauge(y) + dense_fermion_action(y, dynamics.phi, action.mass), x)
    assert torch.allclose(dynamics.force(x), expected, atol=1e-8)
    # the action itself, and autograd through it (as FTHMC differentiates through a flow)
    assert torch.allclose(dynamics(x), action.gauge(x) + dense_fermion_action(x, dynamics.phi, action.mass), rtol=1e-9)
    assert torch.allclose(autograd_force(dynamics, x), expected, atol=1e-8)


def test_the_pseudofermion_force_averages_to_the_force_of_the_determinant():
    """``E_phi[dS_F/dx] = -d log det(D^dag D)/dx``, checked link by link within 4.5 standard errors."""
    action = SchwingerPseudofermion(beta=1.0, mass=0.3)
    x = rough_links(1, shape=(4, 4), scale=0.5)
    generator = torch.Generator().manual_seed(11)
    n = 400
    xs = x.expand(n, *x.shape[1:]).contiguous()
    dynamics = action.refresh(xs, generator)
    fermion = dynamics.force(xs) - action.gauge.force(xs)
    mean, err = fermion.mean(0), fermion.std(0) / math.sqrt(n)
    exact = autograd_force(lambda y: -log_det_normal(y, action.mass), x)[0]
    z = ((mean - exact) / err).abs()
    assert z.max() < 4.5, z.max()
    # and the force of schwinger_det is that same exact force plus the gauge force
    det_action = SchwingerDeterminant(beta=1.0, mass=0.3)
    assert torch.allclose(det_action.force(x)[0], exact + action.gauge.force(x)[0], atol=1e-10)


def test_pseudofermions_have_the_right_density():
    """``phi = D^dag eta``: ``S_F = |eta|^2``, so ``<S_F> = N`` (the number of complex components) and
    ``Var S_F = N``."""
    action = SchwingerPseudofermion(beta=2.0, mass=0.2)
    x = rough_links(200, shape=(4, 4), scale=0.5)
    dynamics = action.refresh(x, torch.Generator().manual_seed(2))
    s_f = dynamics.fermion_action(x)
    n = 2 * 16
    assert abs(float(s_f.mean()) - n) < 4 * math.sqrt(n / 200)
    assert abs(float(s_f.var()) / n - 1) < 4 * math.sqrt(2 / 199)


def test_float32_follows_the_data_and_agrees_with_float64():
    action = SchwingerPseudofermion(beta=2.0, mass=0.2)
    x = rough_links(2, scale=0.5)
    d64 = action.refresh(x, torch.Generator().manual_seed(4))
    d32 = PseudofermionDynamics(action, d64.phi.to(torch.complex64), action.tolerance(torch.float32))
    assert d32.phi.dtype == torch.complex64 and d64.phi.dtype == torch.complex128
    f32, f64 = d32.force(x.float()), d64.force(x)
    assert f32.dtype == torch.float32
    assert torch.allclose(f32.double(), f64, atol=2e-3 * float(f64.abs().max()))
    assert torch.allclose(d32(x.float()).double(), d64(x), rtol=1e-4)


def test_statistics_count_iterations_and_solves_and_reuse_a_solution():
    action = SchwingerPseudofermion(beta=2.0, mass=0.2)
    x = rough_links(2, scale=0.5)
    dynamics = action.refresh(x, torch.Generator().manual_seed(4))
    assert dynamics.solves == 0 and dynamics.statistics()["cg_iterations"].tolist() == [0, 0]
    dynamics(x)
    first = dynamics.statistics()["cg_iterations"]
    dynamics.force(x)  # the same x: the solution is reused
    assert dynamics.solves == 1 and (first > 0).all()
    assert torch.equal(dynamics.statistics()["cg_iterations"], first)
    dynamics.force(x + 0.01)
    assert dynamics.solves == 2 and (dynamics.statistics()["cg_iterations"] > first).all()


def spec(action, **settings):
    base = {
        "lattice": {"shape": [4, 4]},
        "action": {"name": action, "beta": 2.0, "mass": 0.2},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
        "n_chains": 2, "n_thermalization": 2, "n_trajectories": 3, "seed": 1,
    }
    base.update(settings)
    return base


def test_a_pseudofermion_run_reports_its_solver_work_and_is_reproducible():
    table = lf.Simulation.from_spec(spec("schwinger")).run(progress=False)
    assert {"action.cg_iterations", "plaquette", "topological_charge"} <= set(table.columns)
    assert (table["action.cg_iterations"] >= 5).all()
    again = lf.Simulation.from_spec(spec("schwinger")).run(progress=False)
    assert table.equals(again)


def test_a_tolerance_the_dtype_cannot_reach_is_refused_at_build_time():
    bad = spec("schwinger", dtype="float32")
    bad["action"]["cg_tol"] = 1e-8
    with pytest.raises(SpecError, match=r"cg_tol = 1e-08 cannot be reached in float32.*expected cg_tol >= 1e-06"):
        lf.Simulation.from_spec(bad)
    ok = spec("schwinger", dtype="float32")  # the default tolerance follows the dtype
    table = lf.Simulation.from_spec(ok).run(progress=False)
    assert (table["action.cg_iterations"] > 0).all()


def test_no_pure_gauge_exact_value_is_shown_for_the_schwinger_model():
    sim = lf.Simulation.from_spec(spec("schwinger_det"))
    for column, obs in sim.observables.items():
        assert obs.exact() == {}, column
    with pytest.raises(SpecError, match="u1_wilson"):
        lf.Simulation.from_spec(spec("schwinger_det", sampler={"name": "u1_exact"}))


def test_dense_lattices_are_bounded_with_a_clear_error():
    action = SchwingerDeterminant(beta=2.0, mass=0.2)
    with pytest.raises(ValueError, match=r"at most 4096 sites .* use the pseudofermion action 'schwinger'"):
        action(torch.zeros((1, 2, 128, 64), dtype=torch.float64))


def test_default_observables_leave_out_the_dense_action_density_for_pseudofermions():
    # schwinger's __call__ is a dense determinant: action_density (S / V) per measurement would cost more than
    # the trajectory on a large lattice, so it is not a default there (a spec may still name it)
    def observables(action, **extra):
        base = {"lattice": {"shape": [4, 4]}, "action": {"name": action, "beta": 2.0, "mass": 0.2},
                "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 2}}}
        return list(lf.Simulation.from_spec({**base, **extra}).observables)

    assert "action_density" not in observables("schwinger") and "plaquette" in observables("schwinger")
    assert "action_density" in observables("schwinger_det")
    assert observables("schwinger", observables=["action_density"]) == ["action_density"]

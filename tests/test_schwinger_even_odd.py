"""Even-odd preconditioning of the Wilson-Dirac operator (plugins/lattice_flows_schwinger/even_odd.py).

Against the operator of ``dirac.py``: the parity blocks reassemble ``D``, the Schur complement is
``M - D_eo D_oe / M`` as a dense matrix and has ``det D = M^(V/2) det D_hat``, and the solution of
``D^dag D X = b`` through two even-odd solves equals the direct CG solution and solves the full system to
the tolerance, on rough and on smooth (exact pure-gauge) fields, in float64 and float32.
"""

from __future__ import annotations

import math

import pytest
import torch

from lattice_flows_schwinger.cg import conjugate_gradient
from lattice_flows_schwinger.dirac import apply_dirac, apply_normal, complex_dtype, dense_dirac
from lattice_flows_schwinger.even_odd import EvenOddGeometry, EvenOddOperator, solve_normal_even_odd
from lattice_flows_u1.exact_sampling import sample_exact


def links(n, shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return 2 * math.pi * torch.rand((n, 2, *shape), generator=g, dtype=dtype) - math.pi


def spinor(x, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=g, dtype=complex_dtype(x.dtype))


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (8, 8)])
def test_the_parity_blocks_reassemble_the_operator(shape):
    x, mass = links(3, shape), 0.3
    psi = spinor(x)
    op = EvenOddOperator(x, mass)
    g = op.geometry
    pe, po = g.pack(psi, 0), g.pack(psi, 1)
    assert torch.equal(g.unpack(pe, po), psi)
    even = op.diagonal * pe + op.off_diagonal(0, po)
    odd = op.diagonal * po + op.off_diagonal(1, pe)
    assert torch.allclose(g.unpack(even, odd), apply_dirac(x, psi, mass), atol=1e-13)


def test_the_schur_complement_and_its_determinant():
    shape, mass = (4, 6), 0.2
    x = links(2, shape, seed=3)
    g = EvenOddGeometry(shape)
    d = dense_dirac(x, mass)  # rows and columns: (spin, n_0, n_1) flattened
    v = math.prod(shape)
    even = torch.cat([g.sites[0], g.sites[0] + v])  # both spins of the even sites, in the packed order
    odd = torch.cat([g.sites[1], g.sites[1] + v])
    m = mass + 2.0
    dee, doo = d[:, even][:, :, even], d[:, odd][:, :, odd]
    assert torch.allclose(dee, m * torch.eye(v, dtype=d.dtype).expand_as(dee)) and torch.allclose(doo, dee)
    schur = dee - d[:, even][:, :, odd] @ d[:, odd][:, :, even] / m
    n = v  # two spins on V/2 sites
    eye = torch.eye(n, dtype=d.dtype).reshape(n, 2, v // 2)
    # column j of configuration i: D_hat of that configuration applied to the j-th unit vector
    columns = torch.stack([EvenOddOperator(x[i : i + 1].expand(n, -1, -1, -1), mass).schur(eye).reshape(n, n).T for i in range(2)])
    assert torch.allclose(columns, schur, atol=1e-13)
    logdet_full = torch.linalg.slogdet(d).logabsdet
    logdet_schur = torch.linalg.slogdet(schur).logabsdet + n * math.log(m)
    assert torch.allclose(logdet_full, logdet_schur, atol=1e-9)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("smooth", [False, True])
def test_the_even_odd_solution_equals_the_direct_one(dtype, tol, smooth):
    shape, mass = (8, 8), 0.1
    if smooth:
        x = sample_exact(3.0, 4, shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    else:
        x = links(4, shape, seed=7, dtype=dtype)
    b = spinor(x, seed=2)
    direct = conjugate_gradient(lambda v: apply_normal(x, v, mass), b, tol=tol, max_iter=5000)
    eo = solve_normal_even_odd(x, b, mass, tol=tol)
    assert (eo.residual <= tol).all(), eo.residual
    r = b - apply_normal(x, eo.x, mass)
    assert torch.allclose((r.abs() ** 2).flatten(1).sum(1).sqrt() / (b.abs() ** 2).flatten(1).sum(1).sqrt(),
                          eo.residual, rtol=1e-3)
    # both are within the tolerance of the exact solution, amplified by at most the condition number
    exact = torch.linalg.solve(
        (lambda d: d.conj().transpose(1, 2) @ d)(dense_dirac(x.double(), mass)), b.to(torch.complex128).reshape(4, -1)
    ).reshape(b.shape)
    scale = exact.abs().max()
    err = 1e-6 if dtype == torch.float64 else 5e-2
    assert ((eo.x.to(exact.dtype) - exact).abs().max() / scale) < err
    assert ((eo.x - direct.x).abs().max() / scale) < 2 * err
    assert (eo.iterations > 0).all()


def test_odd_lattice_sizes_are_refused():
    with pytest.raises(ValueError, match="even lattice sizes"):
        EvenOddGeometry((5, 4))


# --- the even-odd pseudofermion action (schwinger with even_odd = true) ---------------------------------------

from lattice_flows import Simulation  # noqa: E402
from lattice_flows.forces import autograd_force  # noqa: E402
from lattice_flows_schwinger.action import EvenOddPseudofermionDynamics, SchwingerPseudofermion  # noqa: E402
from lattice_flows_schwinger.dirac import log_det_normal  # noqa: E402


def dense_schur(x, mass):
    """``D_hat`` as a dense matrix per configuration, ``(B, V, V)`` (``V = 2 V/2`` even-site components),
    built column by column from :meth:`EvenOddOperator.schur`, differentiable in ``x``."""
    op = EvenOddOperator(x, mass)
    half = op.geometry.sites[0].numel()
    n = 2 * half
    eye = torch.eye(n, dtype=complex_dtype(x.dtype)).reshape(n, 2, half)
    cols = [op.schur(e.expand(x.shape[0], 2, half)) for e in eye]
    return torch.stack([c.reshape(x.shape[0], n) for c in cols], dim=2)


def test_the_even_odd_force_against_autograd_of_the_dense_action():
    action = SchwingerPseudofermion(beta=2.0, mass=0.15, even_odd=True)
    x = links(3, (4, 6), seed=5) * 0.7
    dynamics = action.refresh(x, torch.Generator().manual_seed(3))
    assert isinstance(dynamics, EvenOddPseudofermionDynamics) and dynamics.phi.shape == (3, 2, 12)

    def dense(y):
        d = dense_schur(y, action.mass)
        flat = dynamics.phi.reshape(3, -1)
        return action.gauge(y) + (flat.conj() * torch.linalg.solve(d.conj().transpose(1, 2) @ d, flat)).real.sum(1)

    expected = autograd_force(dense, x)
    assert torch.allclose(dynamics.force(x), expected, atol=1e-8)
    assert torch.allclose(dynamics(x), dense(x), rtol=1e-9)
    assert torch.allclose(autograd_force(dynamics, x), expected, atol=1e-8)  # FTHMC differentiates through it


def test_the_even_odd_force_averages_to_the_force_of_the_determinant():
    """Same target: ``E_phi[dS_F/dx] = -d log det(D^dag D)/dx`` (the constant ``M^V`` drops out), link by link
    within 4.5 standard errors."""
    action = SchwingerPseudofermion(beta=1.0, mass=0.3, even_odd=True)
    x = links(1, (4, 4), seed=2) * 0.5
    n = 400
    xs = x.expand(n, *x.shape[1:]).contiguous()
    dynamics = action.refresh(xs, torch.Generator().manual_seed(11))
    fermion = dynamics.force(xs) - action.gauge.force(xs)
    mean, err = fermion.mean(0), fermion.std(0) / math.sqrt(n)
    exact = autograd_force(lambda y: -log_det_normal(y, action.mass), x)[0]
    z = ((mean - exact) / err).abs()
    assert z.max() < 4.5, z.max()


def test_even_odd_pseudofermions_have_the_right_density():
    """``phi_e = D_hat^dag eta_e``: ``S_F = |eta_e|^2``, mean and variance ``V`` (complex components on even sites)."""
    action = SchwingerPseudofermion(beta=2.0, mass=0.2, even_odd=True)
    x = links(200, (4, 4), seed=3) * 0.5
    s_f = action.refresh(x, torch.Generator().manual_seed(2)).fermion_action(x)
    n = 16
    assert abs(float(s_f.mean()) - n) < 4 * math.sqrt(n / 200)
    assert abs(float(s_f.var()) / n - 1) < 4 * math.sqrt(2 / 199)


def test_even_odd_solves_take_fewer_iterations_and_float32_agrees():
    x = sample_exact(2.0, 2, (8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = SchwingerPseudofermion(beta=2.0, mass=0.1).refresh(x, torch.Generator().manual_seed(1))
    eo = SchwingerPseudofermion(beta=2.0, mass=0.1, even_odd=True).refresh(x, torch.Generator().manual_seed(1))
    plain.force(x), eo.force(x)
    assert (eo.iterations < plain.iterations).all(), (eo.iterations, plain.iterations)
    eo32 = EvenOddPseudofermionDynamics(eo.action, eo.phi.to(torch.complex64), 1e-5, EvenOddGeometry((8, 8)))
    f32, f64 = eo32.force(x.float()), eo.force(x)
    assert f32.dtype == torch.float32
    assert torch.allclose(f32.double(), f64, atol=2e-3 * float(f64.abs().max()))


def test_even_odd_needs_even_sizes_and_runs_hmc_with_exp_minus_dh_one():
    spec = {
        "lattice": {"shape": [4, 4]}, "action": {"name": "schwinger", "beta": 2.0, "mass": 0.2, "even_odd": True},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}},
        "n_chains": 32, "n_thermalization": 2, "n_trajectories": 6, "seed": 3, "dtype": "float64",
    }
    with pytest.raises(ValueError, match=r"even_odd = true needs even lattice sizes.*\[4, 5\]"):
        Simulation.from_spec({**spec, "lattice": {"shape": [4, 5]}})
    table = Simulation.from_spec(spec).run(progress=False)
    assert (table["action.cg_iterations"] > 0).all()
    w = torch.tensor(table["delta_H"].to_numpy()).neg().exp()
    # 192 trajectories: <exp(-dH)> = 1 within 4 naive standard errors (trajectories of a chain are nearly independent in dH)
    assert abs(float(w.mean()) - 1) < 4 * float(w.std()) / math.sqrt(len(w)), float(w.mean())

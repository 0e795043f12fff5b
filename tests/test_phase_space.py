"""The pluggable phase space: HMC on a group manifold (SU(2) as unit quaternions) and with a mass matrix, exact.

Exact answers: the density of ``a0`` on SU(2) is ``∝ sqrt(1 - a0^2) exp(beta a0)`` (Haar measure times the
Boltzmann weight), ``<a0> = I_2(beta) / I_1(beta)``; a Gaussian has ``<x_i^2> = sigma_i^2`` whatever the masses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

import hamiltonian_toys as toys
from exact_checks import PULL, check_against_exact
from lattice_flows import Simulation, analysis
from lattice_flows.phase_space import FLAT, DiagonalMass
from lattice_flows_hmc.hmc import HMC
from lattice_flows_hmc.integrators import Leapfrog, NestedLeapfrog, Omelyan

BETA = 1.5
INTEGRATORS = {
    "leapfrog": Leapfrog(step_size=0.1, n_steps=10),
    "omelyan": Omelyan(step_size=0.2, n_steps=5),
    "nested_leapfrog": NestedLeapfrog(step_size=0.2, n_steps=5, n_inner=[2, 2]),
}


@pytest.fixture
def hamiltonian_toys(fake_entry_points):
    fake_entry_points.update(toys.entry_points())
    return toys


def _su2(n=6, batch=3, seed=0, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    action = toys.SU2Toy(beta=BETA)
    x = action.sample_prior(batch, (n,), generator=g, dtype=torch.float64, device=device)
    p = toys.SU2.sample_momenta(x, g)
    return action, x, p


def test_su2_exponential_is_on_the_group_and_the_update_reverses():
    _, x, p = _su2()
    assert p.shape == (*x.shape[:-1], 3)
    e = toys.su2_exp(p, 0.7)
    assert torch.allclose(e.norm(dim=-1), torch.ones((), dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(toys.su2_exp(torch.zeros(2, 3, dtype=torch.float64), 0.3)[..., 0], torch.ones(2, dtype=torch.float64))
    back = toys.SU2.update_position(toys.SU2.update_position(x.clone(), p, 0.7), p, -0.7)
    assert torch.allclose(back, x, rtol=0, atol=1e-14)
    # exp(eps P) as a matrix exponential of i p.sigma (an independent computation)
    sigma = torch.tensor([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=torch.complex128)
    m = torch.linalg.matrix_exp(1j * 0.7 * torch.einsum("...k,kij->...ij", p.to(torch.complex128), sigma))
    as_matrix = e[..., :1, None].to(torch.complex128) * torch.eye(2, dtype=torch.complex128) + 1j * torch.einsum("...k,kij->...ij", e[..., 1:].to(torch.complex128), sigma)
    assert torch.allclose(m, as_matrix, rtol=0, atol=1e-13)


def test_su2_force_is_the_lie_derivative_and_autograd_projects_onto_it(device):
    action, x, _ = _su2(seed=1, device=device)
    analytic = action.force(x)
    autograd = toys.SU2AutogradToy(beta=BETA).force(x)
    assert autograd.shape == analytic.shape == (*x.shape[:-1], 3)
    assert torch.allclose(autograd, analytic, rtol=0, atol=1e-13)
    # central differences along each generator acting from the left, one site at a time
    t = 1e-5
    for k in range(3):
        direction = x.new_zeros(*x.shape[:-1], 3)
        direction[:, 2, k] = 1.0
        plus = action(toys.SU2.update_position(x.clone(), direction, t))
        minus = action(toys.SU2.update_position(x.clone(), direction, -t))
        assert torch.allclose((plus - minus) / (2 * t), analytic[:, 2, k], rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", INTEGRATORS)
def test_su2_integrators_are_reversible_and_stay_on_the_group(name, device):
    action, x, p = _su2(seed=2, device=device)
    assert x.device.type == p.device.type == action.force(x).device.type == device.type
    integrator = INTEGRATORS[name]
    x1, p1 = integrator.integrate_on(x, p, action.force, toys.SU2)
    x2, p2 = integrator.integrate_on(x1, -p1, action.force, toys.SU2)
    assert not torch.allclose(x1, x, atol=1e-3)  # it moved
    assert torch.allclose(x2, x, rtol=0, atol=1e-13) and torch.allclose(-p2, p, rtol=0, atol=1e-13)
    assert float((x1.norm(dim=-1) - 1).abs().max()) < 1e-14


@pytest.mark.parametrize("name", ["leapfrog", "omelyan"])
def test_su2_energy_error_falls_as_step_size_to_the_order(name):
    action, x, p = _su2(n=8, batch=4, seed=3)
    cls = type(INTEGRATORS[name])

    def error(eps):
        integrator = cls(step_size=eps, n_steps=round(1.0 / eps))
        x1, p1 = integrator.integrate_on(x, p, action.force, toys.SU2)
        h = lambda q, m: toys.SU2.kinetic_energy(m) + action(q)  # noqa: E731
        return float((h(x1, p1) - h(x, p)).abs().mean())

    ratio = error(0.1) / error(0.05)
    expected = 2.0 ** cls.order
    assert 0.75 * expected < ratio < 1.35 * expected, ratio


def _su2_spec(integrator, **changes):
    spec = {
        "lattice": {"shape": [4]},
        "action": {"name": "su2_toy", "beta": BETA},
        "observables": [
            "su2_a0", "su2_norm_deviation",
            *({"name": "su2_a0_bin", "lo": lo, "hi": hi} for lo, hi in [(-1.0, -0.5), (-0.5, 0.0), (0.0, 0.5), (0.5, 0.8), (0.8, 1.0)]),
        ],
        "sampler": {"name": "hmc", "integrator": integrator},
        "n_chains": 16, "n_thermalization": 20, "n_trajectories": 300, "seed": 11,
    }
    spec.update(changes)
    return spec


@pytest.mark.parametrize(
    "integrator", [{"name": "leapfrog", "step_size": 0.25, "n_steps": 4}, {"name": "omelyan", "step_size": 0.5, "n_steps": 2}]
)
def test_su2_hmc_through_simulation_is_exact(hamiltonian_toys, integrator):
    sim = Simulation.from_spec(_su2_spec(integrator))
    table = sim.run(progress=False)
    summary = sim.summary(table)
    assert summary.loc["su2_a0", "exact"] == pytest.approx(special.iv(2, BETA) / special.iv(1, BETA), rel=1e-14)
    check_against_exact(summary, "su2_a0", 0.01)
    bins = [label for label in summary.index if label.startswith("su2_a0_bin")]
    assert len(bins) == 5 and summary.loc[bins, "exact"].sum() == pytest.approx(1.0, abs=1e-10)
    for label in bins:
        check_against_exact(summary, label, 0.02)
    check_against_exact(summary, "exp(-delta_H)", 0.05)
    check_against_exact(summary, "delta_H_identity(K=2)", 0.05)
    assert 0.5 < summary.loc["accepted", "mean"] < 1.0  # both outcomes occur
    assert table["su2_norm_deviation"].max() < 1e-13  # on the group after 320 trajectories


def test_fthmc_through_the_identity_flow_is_hmc_on_the_group(hamiltonian_toys):
    leapfrog = {"name": "leapfrog", "step_size": 0.3, "n_steps": 4}
    short = {"n_trajectories": 20, "observables": ["su2_a0"]}
    a = Simulation.from_spec(_su2_spec(leapfrog, **short)).run(progress=False)
    fthmc = {"name": "fthmc", "integrator": leapfrog}
    b = Simulation.from_spec(_su2_spec(leapfrog, flow={"name": "su2_identity"}, sampler=fthmc, **short)).run(progress=False)
    assert a["accepted"].tolist() == b["accepted"].tolist() and not a["accepted"].all()
    assert np.allclose(a["delta_H"], b["delta_H"], rtol=0, atol=1e-12)
    assert np.allclose(a["su2_a0"], b["su2_a0"], rtol=0, atol=1e-13)


def test_an_integrator_without_a_phase_space_argument_runs_on_flat_only():
    class OldStyle(Leapfrog):  # written before phase spaces: integrate(x, v, force)
        def integrate(self, x, v, force):
            return super().integrate(x, v, force)

    old = OldStyle(step_size=0.1, n_steps=3)
    x = torch.randn(2, 5, dtype=torch.float64)
    v = torch.randn(2, 5, dtype=torch.float64)
    a = old.integrate_on(x, v, lambda q: q, FLAT)
    b = Leapfrog(step_size=0.1, n_steps=3).integrate(x, v, lambda q: q)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    action, u, p = _su2()
    with pytest.raises(TypeError, match="takes no phase_space.*SU2PhaseSpace"):
        old.integrate_on(u, p, action.force, toys.SU2)


def test_flat_phase_space_is_todays_arithmetic():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    state = g.get_state()
    p = FLAT.sample_momenta(x, g)
    replay = torch.Generator()
    replay.set_state(state)
    assert torch.equal(p, torch.randn(x.shape, generator=replay, dtype=x.dtype))
    assert torch.equal(FLAT.kinetic_energy(p), 0.5 * p.square().flatten(1).sum(dim=1))
    y = x.clone()
    assert FLAT.update_position(y, p, 0.3) is y and torch.equal(y, x.clone().add_(p, alpha=0.3))
    assert torch.equal(FLAT.gradient_to_force(x, p), p)


def test_diagonal_mass_rejects_bad_masses():
    with pytest.raises(ValueError, match=r"positive masses, got \[1.0, -2.0\]"):
        DiagonalMass(torch.tensor([1.0, -2.0]))


def test_hmc_with_a_diagonal_mass_is_exact_on_a_gaussian():
    # Widths 0.5, 1, 3: with masses 1/sigma^2 every mode has period 2 pi, so one step size fits all (unit
    # masses would need a step set by the narrowest mode and many steps for the widest one).
    action = toys.AnisotropicGaussian(sigmas=(0.5, 1.0, 3.0))
    sampler = HMC(integrator=Leapfrog(step_size=0.4, n_steps=4))
    g = torch.Generator().manual_seed(7)
    state = sampler.init(action.sample_prior(16, (3,), generator=g, dtype=torch.float64, device="cpu"), action)
    xs, dhs = [], []
    for i in range(420):
        state, info = sampler.step(state, action, g)
        if i >= 20:
            xs.append(state.x.square().numpy())
            dhs.append(torch.exp(-info["delta_H"]).numpy())
    xs = np.stack(xs, axis=1)  # (chains, trajectories, sites)
    for site, sigma in enumerate(action.sigmas):
        result = analysis.gamma_method(xs[:, :, site])
        assert result.error < 0.08 * sigma**2
        assert abs(result.mean - sigma**2) < PULL * result.error, (site, result.mean, sigma**2, result.error)
    result = analysis.gamma_method(np.stack(dhs, axis=1))
    assert abs(result.mean - 1.0) < PULL * result.error and result.error < 0.05
    # the momenta follow the masses: <p^2> = m
    p = action.phase_space.sample_momenta(torch.zeros(20000, 3, dtype=torch.float64), g)
    assert torch.allclose(p.square().mean(0), action.phase_space.masses, rtol=0.05)

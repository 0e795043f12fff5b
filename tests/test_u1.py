"""2D U(1) geometry and observables, checked against their definitions written out site by site."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lattice_flows import Simulation
from lattice_flows_u1.action import U1Wilson
from lattice_flows_u1.geometry import gauge_transform, plaquette_angles, wrap
from lattice_flows_u1.observables import topological_charge_real


def _random_links(shape, seed, device, dtype, batch=2):
    g = torch.Generator(device=device).manual_seed(seed)
    return U1Wilson(beta=1.0).sample_prior(batch, shape, generator=g, dtype=dtype, device=device)


def test_plaquette_angles_match_the_definition(device):
    L0, L1 = 3, 5
    x = _random_links((L0, L1), 1, device, torch.float64)
    p = plaquette_angles(x)
    for n0 in range(L0):
        for n1 in range(L1):
            expected = x[:, 0, n0, n1] + x[:, 1, (n0 + 1) % L0, n1] - x[:, 0, n0, (n1 + 1) % L1] - x[:, 1, n0, n1]
            assert torch.allclose(p[:, n0, n1], expected, rtol=0, atol=1e-14)


def test_wrap_range(device):
    theta = torch.linspace(-20, 20, 1001, dtype=torch.float64, device=device)
    w = wrap(theta)
    assert torch.all(w >= -math.pi) and torch.all(w < math.pi)
    assert torch.allclose(torch.remainder(w - theta, 2 * math.pi).clamp(max=1.0), torch.zeros_like(w), atol=1e-12)


@given(L0=st.integers(1, 7), L1=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_topological_charge_is_an_integer_on_a_periodic_lattice(L0, L1, seed, device, dtype):
    x = _random_links((L0, L1), seed, device, dtype, batch=8)
    q = topological_charge_real(x)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-3
    assert torch.all((q - torch.round(q)).abs() < tolerance)


def test_topological_charge_counts_a_unit_instanton(device):
    # Spread a flux of 2 pi uniformly: every plaquette angle 2 pi / V, so Q = 1.
    L0, L1 = 6, 4
    V = L0 * L1
    theta = 2 * math.pi / V
    n0 = torch.arange(L0, dtype=torch.float64, device=device)
    n1 = torch.arange(L1, dtype=torch.float64, device=device)
    x = torch.zeros(1, 2, L0, L1, dtype=torch.float64, device=device)
    x[0, 1] = theta * n0[:, None]  # x_1(n) = n_0 theta: each plaquette off the last row gets theta
    x[0, 0, L0 - 1] = -L0 * theta * n1  # the last row closes the flux; the corner plaquette wraps by -2 pi
    p = wrap(plaquette_angles(x))
    assert torch.allclose(p, torch.full_like(p, 2 * math.pi / V), atol=1e-12)
    spec_sim = Simulation.from_spec(
        {"lattice": {"shape": [L0, L1]}, "action": {"name": "u1_wilson", "beta": 1.0}, "sampler": "u1_exact", "observables": ["topological_charge"]}
    )
    assert int(spec_sim.observables["topological_charge"](x)) == 1


@pytest.mark.parametrize("R,T", [(1, 1), (2, 1), (1, 3), (3, 2)])
def test_wilson_loop_is_the_product_of_enclosed_plaquettes(R, T, device):
    L0, L1 = 5, 6
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": [L0, L1]},
            "action": {"name": "u1_wilson", "beta": 1.0},
            "sampler": "u1_exact",
            "observables": [{"name": "wilson_loop", "R": R, "T": T, "column": "W"}, "plaquette"],
        }
    )
    x = _random_links((L0, L1), 3, device, torch.float64)
    p = plaquette_angles(x)
    enclosed = sum(torch.roll(p, shifts=(-i, -j), dims=(1, 2)) for i in range(R) for j in range(T))
    expected = torch.cos(enclosed).mean(dim=(1, 2))
    assert torch.allclose(sim.observables["W"](x), expected, atol=1e-12)
    if R == T == 1:
        assert torch.allclose(sim.observables["W"](x), sim.observables["plaquette"](x), atol=1e-14)


def test_gauge_transformation_leaves_plaquettes(device):
    x = _random_links((4, 4), 5, device, torch.float64)
    a = torch.rand(2, 4, 4, dtype=torch.float64, device=device)
    assert torch.allclose(plaquette_angles(gauge_transform(x, a)), plaquette_angles(x), atol=1e-13)


def test_action_density_and_plaquette_agree(device):
    sim = Simulation.from_spec(
        {"lattice": {"shape": [4, 4]}, "action": {"name": "u1_wilson", "beta": 2.5}, "sampler": "u1_exact", "observables": ["plaquette", "action_density"]}
    )
    x = _random_links((4, 4), 9, device, torch.float64)
    assert torch.allclose(sim.observables["action_density"](x), 2.5 * (1 - sim.observables["plaquette"](x)), atol=1e-13)


@given(
    beta=st.floats(0.1, 10.0),
    L0=st.integers(2, 6),
    L1=st.integers(2, 6),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_hmc_trajectory_reversible_and_energy_conserving_over_beta(beta, L0, L1, batch, seed, device):
    from lattice_flows_hmc.hmc import HMC, kinetic_energy
    from lattice_flows_hmc.integrators import Leapfrog

    action = U1Wilson(beta=beta)
    x0 = _random_links((L0, L1), seed, device, torch.float64, batch=batch)
    v0 = torch.randn(x0.shape, generator=torch.Generator(device=device).manual_seed(seed + 1), dtype=torch.float64, device=device)
    hmc = HMC(integrator=Leapfrog(step_size=0.02 / math.sqrt(beta), n_steps=20))
    x1, v1, delta_H = hmc.trajectory(x0, v0, action)
    x2, v2, back = hmc.trajectory(x1, -v1, action)
    assert torch.allclose(x2, x0, rtol=0, atol=1e-10) and torch.allclose(-v2, v0, rtol=0, atol=1e-10)
    assert torch.allclose(back, -delta_H, atol=1e-9)
    # small steps: |dH| is small compared with the energy scale of the system
    assert torch.all(delta_H.abs() < 0.05 * (kinetic_energy(v0) + action(x0)))

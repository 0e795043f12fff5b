"""``u1_plaquette_poisson``: the construction, its von Mises start, and FTHMC through it.

The generic properties (inverse, log-det against the autograd Jacobian, gauge equivariance, size
independence, spec round trip) are in the contract battery with random weights; here the physics
start ``von_mises_beta`` is checked against the exact single-plaquette distribution, and FTHMC
through it against the exact 2D U(1) values.
"""

from __future__ import annotations

import math

import pytest
import torch

from exact_checks import check_against_exact
from lattice_flows import Simulation
from lattice_flows_u1.exact_sampling import sample_exact
from lattice_flows_u1.flows.poisson import PlaquettePoissonFlow, coulomb_links
from lattice_flows_u1.geometry import plaquette_angles, random_gauge_transform, wrap

def _flow(shape, **config):
    return PlaquettePoissonFlow(PlaquettePoissonFlow.Config(**config), shape).double()


def _weighted_mean(values, weights):
    return float((values * weights).sum() / weights.sum())


@pytest.mark.parametrize("beta, latent_beta", [(2.0, 0.0), (6.0, 0.0), (6.0, 2.0)])
def test_von_mises_start_maps_the_latent_marginal_to_the_target_one(beta, latent_beta):
    """<cos theta> and <cos 2 theta> of h(u), u ~ exp(latent_beta cos u), against I_1/I_0 and I_2/I_0."""
    spline = _flow((4, 4), n_bins=128, von_mises_beta=beta, latent_beta=latent_beta).spline
    u = torch.linspace(-math.pi, math.pi, 400001, dtype=torch.float64)[:-1]  # a quadrature grid
    weights = torch.exp(latent_beta * (torch.cos(u) - 1))
    with torch.no_grad():
        theta, log_slope = spline(u)
    b = torch.tensor(beta, dtype=torch.float64)
    i0 = torch.special.i0(b)
    assert _weighted_mean(torch.cos(theta), weights) == pytest.approx(float(torch.special.i1(b) / i0), abs=2e-5)
    i2 = i0 - 2 / b * torch.special.i1(b)  # I_2 = I_0 - (2/x) I_1
    assert _weighted_mean(torch.cos(2 * theta), weights) == pytest.approx(float(i2 / i0), abs=2e-5)
    # the slopes are those of the exact map: p_latent(u) / p_beta(h(u))
    exact = latent_beta * torch.cos(u) - beta * torch.cos(theta) + math.log(float(i0 / torch.special.i0(torch.tensor(latent_beta))))
    assert float((log_slope - exact).abs().max()) < 0.05


def test_plaquettes_move_by_the_spline_minus_the_mean_shift():
    flow = _flow((6, 5), n_bins=16, von_mises_beta=4.0)
    z = sample_exact(0.5, 3, (6, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        x, _ = flow(z)
        u = wrap(plaquette_angles(z))
        theta, _ = flow.spline(u)
    c = (theta - u).mean(dim=(1, 2), keepdim=True)
    assert float(wrap(plaquette_angles(x) - (theta - c)).abs().max()) < 1e-12


def test_coulomb_links_have_the_requested_curl_on_any_lattice():
    from lattice_flows_u1.flows.poisson import _inverse_laplacian

    g = torch.Generator().manual_seed(1)
    for shape in [(2, 2), (4, 6), (5, 3), (16, 16)]:
        r = torch.randn(2, *shape, generator=g, dtype=torch.float64)
        r = r - r.mean(dim=(1, 2), keepdim=True)
        delta = coulomb_links(r, _inverse_laplacian(shape))
        assert float((plaquette_angles(delta) - r).abs().max()) < 1e-12


@pytest.mark.parametrize("latent_beta", [0.0, 2.0])
def test_inverse_and_equivariance_at_the_stiff_beta_6_start(latent_beta):
    """Slopes up to 1e4: the inverse still converges, on hot and on equilibrium fields."""
    flow = _flow((8, 8), n_bins=128, von_mises_beta=6.0, latent_beta=latent_beta)
    g = torch.Generator().manual_seed(2)
    hot = (torch.rand(4, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    cold = sample_exact(6.0, 4, (8, 8), generator=g, dtype=torch.float64)
    for x in (hot, cold):
        with torch.no_grad():
            z, logdet_inv = flow.inverse(x)
            x2, logdet = flow(z)
        assert float(wrap(x2 - x).abs().max()) < 1e-9
        assert float((logdet + logdet_inv).abs().max()) < 1e-8
        gz = random_gauge_transform(z, torch.Generator().manual_seed(3))
        with torch.no_grad():
            x_of_gz, _ = flow(gz)
        # f(g z) = g f(z): same plaquettes, and the difference to g z is the same link shift as x - z
        assert float(wrap((x_of_gz - gz) - (x2 - z)).abs().max()) < 1e-9


def test_inverse_reports_non_convergence():
    flow = _flow((4, 4), n_bins=16, von_mises_beta=6.0)
    x = (torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * math.pi
    with pytest.raises(RuntimeError, match="did not converge in 1 iterations"):
        flow.inverse(x, max_iterations=1)


def test_wrong_input_shape_names_the_shapes():
    flow = _flow((4, 4))
    with pytest.raises(ValueError, match=r"\(B, 2, 4, 4\).*\(1, 2, 4, 8\)"):
        flow(torch.zeros(1, 2, 4, 8, dtype=torch.float64))


def _fthmc_spec(beta, shape, flow, n_trajectories, seed=0, step_size=0.1, n_steps=8):
    return {
        "lattice": {"shape": list(shape)},
        "action": {"name": "u1_wilson", "beta": beta},
        "flow": {"name": "u1_plaquette_poisson", **flow},
        "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": step_size, "n_steps": n_steps}},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": 16, "n_thermalization": 30, "n_trajectories": n_trajectories,
        "seed": seed, "dtype": "float64", "start": "cold",
    }


def test_fthmc_through_the_von_mises_start_reproduces_the_exact_values():
    """beta = 3 on 6x6 (exact <cos x_P> and <Q^2> from the character expansion), 4 standard errors."""
    sim = Simulation.from_spec(_fthmc_spec(3.0, (6, 6), {"n_bins": 64, "von_mises_beta": 3.0, "latent_beta": 1.0}, 300, step_size=0.05, n_steps=12))
    summary = sim.summary(sim.run())
    for row, max_error in [("plaquette", 0.004), ("topological_charge^2", 0.1), ("exp(-delta_H)", 0.05)]:
        check_against_exact(summary, row, max_error)
    assert summary.loc["accepted", "mean"] > 0.6


def test_fthmc_through_the_von_mises_start_moves_topology_where_hmc_is_frozen():
    """beta = 6, 8x8, from the same exact start: HMC keeps Q, FTHMC changes it in most chains."""
    beta, shape = 6.0, (8, 8)
    start = sample_exact(beta, 16, shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    flow = {"n_bins": 128, "von_mises_beta": 6.0, "latent_beta": 2.0}
    changes = {}
    for name in ("hmc", "fthmc"):
        spec = _fthmc_spec(beta, shape, flow, 40)
        spec["sampler"]["name"] = name
        spec["n_thermalization"] = 0
        table = Simulation.from_spec(spec).run(initial=start)
        q = table.pivot(index="trajectory", columns="chain", values="topological_charge").round()
        changes[name] = int((q.diff().abs() > 0.5).sum().sum())
    assert changes["hmc"] <= 2, changes
    assert changes["fthmc"] >= 40, changes


def test_the_infinite_volume_map_is_a_good_proposal_at_beta_6():
    """latent_beta = 0 is exact in infinite volume; on 8x8 only the global shift c is off: ESS 0.3.

    The reweighting factor ``exp(-S(f(z)) + log det)`` on 4096 uniform ``z``: its ESS fraction is above
    0.15 (0.30 measured on 8192 samples).
    """
    from lattice_flows_u1.action import U1Wilson

    flow = _flow((8, 8), n_bins=128, von_mises_beta=6.0)
    z = (torch.rand(4096, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * math.pi
    with torch.no_grad():
        x, logdet = flow(z)
        log_w = logdet - U1Wilson(beta=6.0)(x)
    w = torch.exp(log_w - log_w.max())
    assert float(w.sum() ** 2 / (w * w).sum()) / len(w) > 0.15

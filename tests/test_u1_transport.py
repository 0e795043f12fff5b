"""Context-free von Mises transport layers and ``u1_nonequilibrium_transport``, the protocol that uses them.

The layers against the coupling flow they reproduce and against autograd (their Jacobian), the sampler against
the exact solution of 2D U(1) (``lattice_flows_u1.exact``), not against another sampler. Fixed seeds; tolerances
in standard errors of the Gamma method (``Simulation.summary``).
"""

from __future__ import annotations

import math

import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.errors import SpecError
from lattice_flows.registry import ACTIONS, SAMPLERS
from lattice_flows_u1.exact_sampling import sample_exact
from lattice_flows_u1.flows.coupling import PlaquetteCouplingFlow
from lattice_flows_u1.flows.von_mises_transport import VonMisesTransport
from lattice_flows_u1.nonequilibrium import U1NonEquilibriumTransport

from exact_checks import check_against_exact, check_jarzynski_u1

INTEGRATOR = {"name": "leapfrog", "step_size": 0.1, "n_steps": 5}


def _links(shape, n=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, *shape, dtype=dtype, generator=g) * 2 - 1) * math.pi


def exact_fields(beta, n, shape):
    """``n`` exact configurations of ``u1_wilson`` at ``beta`` (the prior's own exact sampler), float64."""
    return sample_exact(beta, n, shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _angle_gap(a, b) -> float:
    return float(torch.remainder(a - b + math.pi, 2 * math.pi).sub(math.pi).abs().max())


@pytest.mark.parametrize("n_layers", [4, 8, 12])
def test_the_layers_are_the_coupling_flows_von_mises_start_without_its_nets(n_layers):
    flow = PlaquetteCouplingFlow(
        PlaquetteCouplingFlow.Config(n_layers=n_layers, hidden=(), kernel="spline", n_bins=16, von_mises_beta=4.0,
                                     latent_beta=3.0), (8, 12),
    ).double()
    x = _links((8, 12))
    with torch.no_grad():
        y, logdet = flow(x)
    y_t, logdet_t = VonMisesTransport(3.0, 4.0, n_layers=n_layers, n_bins=16)(x)
    # the flow's start passes through float32 (its nets are built before .double()), the transport's does not
    assert _angle_gap(y, y_t) < 1e-6 and float((logdet - logdet_t).abs().max()) < 1e-5


def check_log_det_and_gauge_equivariance(transport, gauge_shape):
    """``transport``'s ``log|det|`` against autograd's Jacobian on 4x4 links, and ``transport(g x) = g transport(x)``
    with the same ``log|det|`` for a random gauge transformation ``g`` on ``gauge_shape``."""
    x = _links((4, 4), n=2, seed=1)
    _, logdet = transport(x)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: transport(v.view(1, 2, 4, 4))[0].flatten(), x[b:b + 1])
        sign, value = torch.linalg.slogdet(jac.reshape(32, 32))
        assert float(sign) > 0 and abs(float(value) - float(logdet[b])) < 1e-9
    action = ACTIONS.get("u1_wilson")(beta=2.0)
    x = _links(gauge_shape, seed=2)
    gauged = action.random_symmetry(x, torch.Generator().manual_seed(4))
    (y, logdet), (y_g, logdet_g) = transport(x), transport(gauged)
    assert _angle_gap(action.random_symmetry(y, torch.Generator().manual_seed(4)), y_g) < 1e-9
    assert float((logdet - logdet_g).abs().max()) < 1e-9


def test_log_det_is_the_log_det_of_the_jacobian_and_the_map_is_gauge_equivariant():
    check_log_det_and_gauge_equivariance(VonMisesTransport(1.0, 3.0, n_layers=8, n_bins=8), (8, 8))


def test_the_layers_follow_the_dtype_and_refuse_a_lattice_they_cannot_mask():
    transport = VonMisesTransport(2.0, 2.5)
    y, logdet = transport(_links((4, 8), dtype=torch.float32))
    assert y.dtype == logdet.dtype == torch.float32 and y.shape == (4, 2, 4, 8)
    with pytest.raises(ValueError, match=r"multiples of 4, got \(4, 2, 6, 8\)"):
        transport(_links((6, 8)))


def _spec(beta, prior_beta, n_switch, n_trajectories, shape=(4, 4), **sampler) -> dict:
    return {
        "lattice": {"shape": list(shape)}, "action": {"name": "u1_wilson", "beta": beta},
        "sampler": {"name": "u1_nonequilibrium_transport", "prior": {"name": "u1_wilson", "beta": prior_beta},
                    "n_switch": n_switch, "integrator": INTEGRATOR, **sampler},
        "observables": ["plaquette", "topological_charge"], "n_chains": 16, "n_thermalization": 10,
        "n_trajectories": n_trajectories, "seed": 5, "dtype": "float64",
    }


def test_the_sampler_is_registered_and_refuses_what_it_cannot_transport():
    cls = SAMPLERS.get("u1_nonequilibrium_transport")
    assert cls is U1NonEquilibriumTransport
    assert cls.applies_to(ACTIONS.get("u1_wilson")) and not cls.applies_to(ACTIONS.get("schwinger"))
    assert not cls.applies_to(ACTIONS.get("u1_wilson_defect")) and not cls.applies_to(ACTIONS.get("phi4"))
    with pytest.raises(SpecError, match=r"multiples of 4.*got \[6, 8\]"):
        Simulation.from_spec(_spec(3.0, 1.0, 4, 3, shape=(6, 8)))
    spec = _spec(3.0, 1.0, 4, 3)
    spec["sampler"]["prior"] = {"name": "u1_wilson_defect", "beta": 3.0, "defect_beta": 1.0, "defect_shape": [1, 2]}
    with pytest.raises(SpecError, match="the prior must be a u1_wilson action.*U1WilsonDefect"):
        Simulation.from_spec(spec)
    spec = _spec(3.0, 1.0, 4, 3)
    del spec["sampler"]["prior"]
    with pytest.raises(SpecError, match="the prior must be a u1_wilson action.*got none"):
        Simulation.from_spec(spec)
    with pytest.raises(SpecError, match="transport_reach"):
        Simulation.from_spec(_spec(3.0, 1.0, 4, 3, transport_reach=-1.0))


def test_nonequilibrium_with_transport_reproduces_the_exact_values():
    """4x4 at beta 4 from a prior at beta 1 in 6 steps with 8 layers per step: plaquette, <Q^2> and the
    delta_H identity within 4 standard errors of exact (16 chains x 300 updates)."""
    sim = Simulation.from_spec(_spec(4.0, 1.0, 6, 300, transport_layers=8, transport_reach=1.5))
    table = sim.run(progress=False)
    summary = sim.summary(table)
    for row in ("plaquette", "topological_charge^2", "delta_H_identity(K=2)"):
        check_against_exact(summary, row, max_error=0.1)  # the summary's exact values: lattice_flows_u1.exact
    assert 0.1 < summary.loc["accepted", "mean"] < 0.95
    assert sim.to_spec()["sampler"]["transport_layers"] == 8


def test_the_transport_lowers_the_work_variance_of_the_same_protocol():
    """On 8x8 from beta 2 to 4 in 8 steps: the same chains' works with and without the layers (the plain
    ``nonequilibrium`` sampler), from the same exact prior fields: the transported variance is smaller."""
    works = {}
    for name in ("nonequilibrium", "u1_nonequilibrium_transport"):
        spec = _spec(4.0, 2.0, 8, 1, shape=(8, 8))
        spec["sampler"]["name"] = name
        spec.update(n_chains=64, n_thermalization=0)
        sim = Simulation.from_spec(spec)
        y = exact_fields(2.0, 64, (8, 8))
        _, _, work, _ = sim.sampler.propose(y, sim.action, torch.Generator().manual_seed(2))
        works[name] = work
    assert float(works["u1_nonequilibrium_transport"].var()) < 0.7 * float(works["nonequilibrium"].var())


@pytest.mark.parametrize("layers, reach", [(4, 1.0), (8, 1.5)])
def test_the_work_obeys_jarzynski_against_the_exact_free_energy(layers, reach):
    """``<exp(-W)> = Z(beta) / Z(beta_p)`` over protocols from exact prior fields, against
    ``log Z(beta) - log Z(beta_p) = -V int (1 - <cos x_P>(b)) db`` from the exact plaquette (Gauss-Legendre, 32
    nodes), within 4 standard errors (delta method, 512 protocols). A work without the layers' Jacobian misses
    it by tens of standard errors (this test's reason to exist: the chain test above is not that sensitive)."""
    spec = _spec(3.0, 2.0, 6, 1, transport_layers=layers, transport_reach=reach)
    spec.update(n_chains=512, n_thermalization=0)
    sim = Simulation.from_spec(spec)
    _, _, work, _ = sim.sampler.propose(exact_fields(2.0, 512, (4, 4)), sim.action, torch.Generator().manual_seed(3))
    check_jarzynski_u1(work, 2.0, 3.0, (4, 4))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 5e-5)])
def test_the_shared_spline_gives_the_per_site_splines_numbers_and_gradients(dtype, tol, device):
    """``CircularSpline.displacement_shared`` (tables built once) against ``displacement`` with the same parameters
    expanded to every site (the per-site tables the transport layers used before): the same displacement, log
    slope and gradients in ``x`` and in the parameters, to rounding."""
    from lattice_flows_u1.flows.circle_maps import CircularSpline

    spline = CircularSpline(n_bins=12)
    g = torch.Generator().manual_seed(3)
    params = (torch.randn(spline.n_params, generator=g, dtype=torch.float64) * 1.5).to(device=device, dtype=dtype)
    x = ((torch.rand(6, 5, 7, generator=g, dtype=torch.float64) * 2 - 1) * 3.5).to(device=device, dtype=dtype)
    results = []
    for shared in (False, True):
        p, v = params.clone().requires_grad_(True), x.clone().requires_grad_(True)
        d, logd = spline.displacement_shared(v, p) if shared else spline.displacement(v, p.view(-1, 1, 1, 1).expand(-1, *v.shape))
        (d.sin().sum() + (0.3 * logd).sum()).backward()
        results.append((d.detach(), logd.detach(), v.grad, p.grad))
    for a, b in zip(*results):
        assert float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))
    with pytest.raises(ValueError, match=r"params must be \(37,\), got \(37, 2\)"):
        spline.displacement_shared(x, params.view(-1, 1).expand(-1, 2))


def test_checkerboard_layers_log_det_gauge_equivariance_and_what_they_move():
    """``CheckerboardTransport``: ``log|det|`` against autograd's Jacobian (with moved splines, so the map is not
    symmetric), gauge equivariance, and that a colour's layer moves its plaquettes by their spline and each
    plaquette of the other colour by minus a quarter of its four neighbours' moves."""
    from lattice_flows_u1.flows.checkerboard_transport import CheckerboardTransport, checkerboard_mask, spread_to_links
    from lattice_flows_u1.geometry import plaquette_angles

    transport = CheckerboardTransport(2.0, 3.0, n_bins=8)
    g = torch.Generator().manual_seed(2)
    transport._params = [p + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in transport._params]
    check_log_det_and_gauge_equivariance(transport, (8, 6))
    mask = checkerboard_mask((8, 6), 0)
    delta = torch.randn(3, 8, 6, generator=g, dtype=torch.float64) * mask
    moved = plaquette_angles(spread_to_links(delta))
    neighbours = sum(torch.roll(delta, s, dims=d) for s in (1, -1) for d in (1, 2))
    assert torch.allclose(moved, delta - neighbours / 4, atol=1e-12)
    with pytest.raises(ValueError, match=r"even, got \(4, 2, 5, 6\)"):
        transport(_links((5, 6)))


def _checkerboard_spec(*args, **kwargs) -> dict:
    spec = _spec(*args, **kwargs)
    spec["sampler"]["name"] = "u1_nonequilibrium_checkerboard"
    return spec


def test_the_checkerboard_sampler_is_exact_and_refuses_an_odd_lattice():
    """``u1_nonequilibrium_checkerboard``: on 4x4 at beta 4 from beta 1 in 6 steps, plaquette, ``<Q^2>`` and the
    ``delta_H`` identity within 4 standard errors of exact (16 chains x 300 updates); its works obey Jarzynski's
    equality with the exact free energy (512 protocols, beta 2 -> 3, reach 0.5 and 1); an odd lattice and a prior
    that is not ``u1_wilson`` are refused before anything runs."""
    sim = Simulation.from_spec(_checkerboard_spec(4.0, 1.0, 6, 300))
    summary = sim.summary(sim.run(progress=False))
    for row in ("plaquette", "topological_charge^2", "delta_H_identity(K=2)"):
        check_against_exact(summary, row, max_error=0.1)
    assert 0.1 < summary.loc["accepted", "mean"] < 0.95 and sim.to_spec()["sampler"]["transport_reach"] == 0.5
    for reach in (0.5, 1.0):
        spec = _checkerboard_spec(3.0, 2.0, 6, 1, transport_reach=reach)
        spec.update(n_chains=512, n_thermalization=0)
        sim = Simulation.from_spec(spec)
        _, _, work, _ = sim.sampler.propose(exact_fields(2.0, 512, (4, 4)), sim.action, torch.Generator().manual_seed(3))
        check_jarzynski_u1(work, 2.0, 3.0, (4, 4))
    with pytest.raises(SpecError, match=r"multiples of 2, got \[5, 6\]"):
        Simulation.from_spec(_checkerboard_spec(3.0, 1.0, 4, 3, shape=(5, 6)))
    spec = _checkerboard_spec(3.0, 1.0, 4, 3, shape=(6, 6))
    spec["sampler"]["prior"] = {"name": "u1_wilson_defect", "beta": 3.0, "defect_beta": 1.0, "defect_shape": [1, 2]}
    with pytest.raises(SpecError, match="u1_nonequilibrium_checkerboard: the prior must be a u1_wilson action"):
        Simulation.from_spec(spec)

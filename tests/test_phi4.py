"""phi^4 theory: the action against its definition, its two parameterisations, the exact free field
against a dense-matrix computation, the observables and the affine coupling flow; HMC against the exact
free-field values, and HMC against FTHMC and flow_imh at an interacting point.

The contract batteries (tests/test_contracts.py, tests/test_flow_contracts.py) test phi4, its observables
and affine_coupling as registered components; this file tests what is particular to them.
Statistical tests use fixed seeds and a tolerance of 4 standard errors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lattice_flows import Simulation
from lattice_flows.errors import SpecError
from lattice_flows_phi4 import exact
from lattice_flows_phi4.action import Phi4
from lattice_flows_phi4.flows.affine import AffineCouplingFlow, checkerboard

PULL = 4.0  # standard errors allowed in statistical tests


def _fields(shape, seed, batch=3, device="cpu", scale=1.0):
    g = torch.Generator(device=device).manual_seed(seed)
    return scale * torch.randn((batch, *shape), generator=g, dtype=torch.float64, device=device)


def _by_definition(x: torch.Tensor, kappa: float, lam: float) -> torch.Tensor:
    """The hopping-form action written out site by site, for one configuration ``x`` (no batch axis)."""
    shape = x.shape
    total = x.new_zeros(())
    for n in itertools.product(*map(range, shape)):
        phi = x[n]
        for mu in range(len(shape)):
            m = list(n)
            m[mu] = (m[mu] + 1) % shape[mu]
            total = total - 2 * kappa * phi * x[tuple(m)]
        total = total + (1 - 2 * lam) * phi**2 + lam * phi**4
    return total


# -- the action -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5), (4,), (2, 3, 3), (1, 4)])
def test_action_matches_the_definition_site_by_site(shape, device):
    action = Phi4(kappa=0.23, lam=0.7)
    x = _fields(shape, 1, device=device)
    s = action(x)
    for i in range(x.shape[0]):
        assert float(s[i]) == pytest.approx(float(_by_definition(x[i], 0.23, 0.7)), rel=1e-12)


@given(
    kappa=st.floats(0.01, 1.0),
    lam=st.floats(0.0, 2.0),
    shape=st.sampled_from([(4, 4), (3, 5), (6,), (2, 3, 4)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_standard_form_of_the_rescaled_field_is_the_hopping_action(kappa, lam, shape, seed):
    hopping = Phi4(kappa=kappa, lam=lam)
    standard, scale = hopping.to_standard(len(shape))
    assert standard.form == "standard" and scale == pytest.approx(math.sqrt(2 * kappa))
    phi = _fields(shape, seed)
    s_hop = hopping(phi)
    assert torch.allclose(standard(scale * phi), s_hop, rtol=1e-10, atol=1e-10 * float(s_hop.abs().max()))
    # and back: the same (kappa, lam), the inverse scale
    back, inverse_scale = standard.to_hopping(len(shape))
    assert back.kappa == pytest.approx(kappa, rel=1e-10) and back.lam == pytest.approx(lam, rel=1e-9, abs=1e-12)
    assert inverse_scale * scale == pytest.approx(1.0)


def test_standard_form_is_its_own_formula():
    # S = sum_n [ sum_mu (phi(n + mu) - phi(n))^2 / 2 + m2 phi^2 / 2 + lam0 phi^4 ]
    action = Phi4(m2=-1.3, lam0=0.4)
    x = _fields((3, 4, 2), 2)
    kinetic = sum(((torch.roll(x, -1, mu) - x) ** 2 / 2).flatten(1).sum(1) for mu in (1, 2, 3))
    expected = kinetic + (-1.3 / 2 * x**2 + 0.4 * x**4).flatten(1).sum(1)
    assert torch.allclose(action(x), expected, rtol=1e-12)
    assert action.to_spec() == {"m2": -1.3, "lam0": 0.4}


def test_albergo_point_in_both_forms():
    # Albergo et al.'s m^2 = -4, lambda = 8 (their convention) is m2 = -4, lam0 = 2 here: kappa = 1/4, lam = 1/2.
    hopping, _ = Phi4(m2=-4.0, lam0=2.0).to_hopping(2)
    assert hopping.kappa == pytest.approx(0.25) and hopping.lam == pytest.approx(0.5)
    # the free standard form: kappa = 1 / (m2 + 2D)
    free, _ = Phi4(m2=0.5, lam0=0.0).to_hopping(2)
    assert free.kappa == pytest.approx(1 / 4.5) and free.lam == 0.0


@pytest.mark.parametrize(
    "params, match",
    [
        ({}, r"\['kappa'\]: give either kappa and lam .* got none"),
        ({"kappa": 0.2}, r"\['lam'\]: .*got kappa without lam"),
        ({"lam0": 0.1}, r"\['m2'\]: .*got lam0 without m2"),
        ({"kappa": 0.2, "lam": 0.1, "m2": 1.0}, r"\['m2'\]: .*not both; got kappa, lam, m2"),
        ({"kappa": 0.2, "lam": -0.1}, r"\['lam'\]: expected a number >= 0.0, got -0.1"),
        ({"kappa": "0.2", "lam": 0.1}, r"\['kappa'\]: expected a number, got '0.2'"),
        ({"kappa": 0.2, "lam": 0.1, "beta": 1.0}, r"unknown parameter 'beta' for phi4; accepted: kappa, lam, m2, lam0"),
    ],
)
def test_exactly_one_parameterisation(params, match):
    hmc = {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}}
    spec = {"lattice": {"shape": [4, 4]}, "action": {"name": "phi4", **params}, "sampler": hmc}
    with pytest.raises(SpecError, match=match):
        Simulation.from_spec(spec)


@pytest.mark.parametrize("action", [{"kappa": 0.2, "lam": 0.0}, {"m2": 0.3, "lam0": 0.05}])
def test_spec_round_trip_keeps_the_form(action):
    spec = {
        "lattice": {"shape": [4, 6]},
        "action": {"name": "phi4", **action},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
    }
    sim = Simulation.from_spec(spec)
    assert sim.to_spec()["action"] == {"name": "phi4", **action}
    assert Simulation.from_spec(sim.to_spec()) == sim
    assert set(sim.observables) == {"abs_magnetization", "magnetization", "phi_squared", "susceptibility"}


def test_free_action_unbounded_below_is_a_spec_error():
    spec = {
        "lattice": {"shape": [4, 4]},
        "action": {"name": "phi4", "kappa": 0.25, "lam": 0.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
    }
    with pytest.raises(SpecError, match=r"unbounded below .* 1/\(2D\) = 0.25"):
        Simulation.from_spec(spec)
    Simulation.from_spec({**spec, "action": {"name": "phi4", "kappa": 0.25, "lam": 0.01}})  # the quartic term bounds it


def test_random_symmetry_is_a_sign_times_a_translation():
    action = Phi4(kappa=0.2, lam=0.1)
    shape = (3, 4)
    x = _fields(shape, 5, batch=100)
    y = action.random_symmetry(x, torch.Generator().manual_seed(1))
    seen = set()
    for i in range(x.shape[0]):
        hits = [
            (sign, shift)
            for sign in (1, -1)
            for shift in itertools.product(*map(range, shape))
            if torch.equal(y[i], sign * torch.roll(x[i], shift, (0, 1)))
        ]
        assert len(hits) == 1 and hits[0] != (1, (0, 0))
        seen.add(hits[0])
    assert len(seen) >= 20  # a spread of the 23 group elements, not one
    assert torch.allclose(action(y), action(x), rtol=1e-12)


def test_prior_log_prob_is_the_normalised_standard_normal():
    x = _fields((3, 2), 3)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(Phi4(kappa=0.1, lam=0.1).prior_log_prob(x), expected, rtol=1e-12)


# -- exact free field ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, shape",
    [
        ({"kappa": 0.2, "lam": 0.0}, (4, 6)),
        ({"kappa": 0.24, "lam": 0.0}, (5, 3)),
        ({"kappa": -0.15, "lam": 0.0}, (6,)),
        ({"kappa": 0.1, "lam": 0.0}, (2, 3, 4)),
        ({"m2": 0.3, "lam0": 0.0}, (4, 4)),
    ],
)
def test_free_field_against_the_dense_covariance(params, shape):
    """``<x x^T> = H^-1`` with ``H`` the Hessian of ``S`` (by autograd), inverted as a dense matrix."""
    action = Phi4(**params)
    V = math.prod(shape)
    zero = torch.zeros(shape, dtype=torch.float64)
    H = torch.autograd.functional.hessian(lambda u: action(u.view(1, *shape))[0], zero).reshape(V, V)
    cov = torch.linalg.inv(H).numpy()
    assert exact.phi_squared(action, shape) == pytest.approx(np.trace(cov) / V, rel=1e-12)
    chi = cov.sum() / V  # V <M^2> = (1/V) sum_nm <x_n x_m>
    assert exact.susceptibility(action, shape) == pytest.approx(chi, rel=1e-12)
    assert exact.abs_magnetization(action, shape) == pytest.approx(math.sqrt(2 * chi / (math.pi * V)), rel=1e-12)
    grid = cov.reshape(shape[0], V // shape[0], shape[0], V // shape[0])  # (n_0, rest, m_0, rest)
    slices = grid.sum(axis=(1, 3))  # <Sigma(n_0) Sigma(m_0)>
    for t in range(shape[0]):
        expected = sum(slices[(n0 + t) % shape[0], n0] for n0 in range(shape[0])) / V
        assert exact.two_point(action, shape, t) == pytest.approx(expected, rel=1e-12)


def test_free_field_in_the_hopping_normalisation():
    # <phi^2> = (1/V) sum_p 1 / (2 - 4 kappa sum_mu cos p_mu), written out
    kappa, shape = 0.2, (4, 6)
    expected = np.mean(
        [
            1 / (2 - 4 * kappa * (math.cos(2 * math.pi * k0 / 4) + math.cos(2 * math.pi * k1 / 6)))
            for k0 in range(4)
            for k1 in range(6)
        ]
    )
    action = Phi4(kappa=kappa, lam=0.0)
    assert exact.phi_squared(action, shape) == pytest.approx(expected, rel=1e-14)
    assert exact.susceptibility(action, shape) == pytest.approx(1 / (2 - 8 * kappa), rel=1e-14)
    with pytest.raises(ValueError, match="free field"):
        exact.phi_squared(Phi4(kappa=0.2, lam=0.1), shape)


def test_exact_values_reach_the_observables_only_for_the_free_field():
    def summary_exact(action):
        sim = Simulation.from_spec(
            {
                "lattice": {"shape": [4, 4]},
                "action": {"name": "phi4", **action},
                "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
                "observables": [
                    "magnetization", "abs_magnetization", "susceptibility", "phi_squared", {"name": "two_point", "t": 1}
                ],
            }
        )
        return {column: obs.exact() for column, obs in sim.observables.items()}

    free = summary_exact({"kappa": 0.2, "lam": 0.0})
    a = Phi4(kappa=0.2, lam=0.0)
    assert free == {
        "magnetization": {1: 0.0},
        "abs_magnetization": {1: exact.abs_magnetization(a, (4, 4))},
        "susceptibility": {1: exact.susceptibility(a, (4, 4))},
        "phi_squared": {1: exact.phi_squared(a, (4, 4))},
        "two_point(t=1)": {1: exact.two_point(a, (4, 4), 1)},
    }
    interacting = summary_exact({"kappa": 0.2, "lam": 0.1})
    assert interacting == {"magnetization": {1: 0.0}, **{k: {} for k in free if k != "magnetization"}}


# -- observables ----------------------------------------------------------------------------------


def test_two_point_definition_and_sum_rule():
    shape = (5, 3)
    x = _fields(shape, 7)
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": list(shape)},
            "action": {"name": "phi4", "kappa": 0.2, "lam": 0.1},
            "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
            "observables": [{"name": "two_point", "t": t} for t in range(5)] + ["susceptibility"],
        }
    )
    values = sim.measure(x)
    V = math.prod(shape)
    for t in range(5):
        expected = [
            sum(float(x[b, (n0 + t) % 5].sum() * x[b, n0].sum()) for n0 in range(5)) / V for b in range(x.shape[0])
        ]
        assert values[f"two_point(t={t})"].tolist() == pytest.approx(expected, rel=1e-12)
    total = sum(values[f"two_point(t={t})"] for t in range(5))
    assert torch.allclose(total, values["susceptibility"], rtol=1e-12)
    with pytest.raises(SpecError, match=r"\['t'\]: expected t < L_0 = 5, got 5"):
        Simulation.from_spec({**sim.to_spec(), "observables": [{"name": "two_point", "t": 5}]})


# -- the affine coupling flow ---------------------------------------------------------------------


def _random_flow(shape, seed, **config):
    flow = AffineCouplingFlow(AffineCouplingFlow.Config(**{"n_layers": 4, "hidden": (5,), **config}), shape).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            std = 0.4 if p.dim() < 2 else 0.4 / math.sqrt(p[0].numel())
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow


def test_checkerboard_alternates_on_the_torus():
    for shape in [(4, 6), (2, 4, 2), (8,)]:
        even = checkerboard(shape, 0)
        assert even.sum() * 2 == math.prod(shape)
        for mu in range(len(shape)):
            assert torch.equal(torch.roll(even, 1, mu), ~even)  # every neighbour has the other colour, across the boundary too


PLAIN = {"global_input": False, "free_field_layer": False}  # the pure Real NVP
VARIANTS = [PLAIN, {**PLAIN, "global_input": True}, {}, {"zero_mode_layer": True}]


@pytest.mark.parametrize("config", VARIANTS)
def test_flow_commutes_with_the_sign_flip_and_checkerboard_shifts(config):
    shape = (4, 6)
    flow = _random_flow(shape, 1, **config)
    z = _fields(shape, 2)
    with torch.no_grad():
        x, logdet = flow(z)
        x_neg, logdet_neg = flow(-z)
        assert torch.allclose(x_neg, -x, atol=1e-12) and torch.allclose(logdet_neg, logdet, atol=1e-12)
        for shift in [(1, 1), (2, 0), (0, 4), (3, 1)]:  # even total shift: the checkerboard maps to itself
            x_shift, logdet_shift = flow(torch.roll(z, shift, (1, 2)))
            assert torch.allclose(x_shift, torch.roll(x, shift, (1, 2)), atol=1e-12)
            assert torch.allclose(logdet_shift, logdet, atol=1e-12)
        x_odd, _ = flow(torch.roll(z, (1, 0), (1, 2)))  # an odd shift swaps the colours: not equivariant
        assert not torch.allclose(x_odd, torch.roll(x, (1, 0), (1, 2)), atol=1e-6)
    plain = _random_flow(shape, 1, z2_symmetric=False, **config)
    with torch.no_grad():
        assert not torch.allclose(plain(-z)[0], -plain(z)[0], atol=1e-6)


@pytest.mark.parametrize("config", VARIANTS)
@pytest.mark.parametrize("shape", [(6,), (2, 4, 4)])
def test_flow_in_one_and_three_dimensions(shape, config):
    flow = _random_flow(shape, 3, **config)
    z = _fields(shape, 4, batch=1)
    with torch.no_grad():
        x, logdet = flow(z)
        z2, logdet_inv = flow.inverse(x)
    assert torch.allclose(z2, z, atol=1e-12)
    assert torch.allclose(logdet + logdet_inv, torch.zeros(1, dtype=torch.float64), atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda u: flow(u)[0].reshape(-1), z).reshape(z.numel(), z.numel())
    sign, expected = torch.linalg.slogdet(jac)
    assert float(sign) > 0 and float(logdet[0]) == pytest.approx(float(expected), abs=1e-10)


def test_new_flow_runs_in_the_default_dtype_without_conversion():
    # The free-field layer keeps p^2 in float64 until the module is converted; a new flow (float32 weights)
    # must still run on float32 fields.
    flow = AffineCouplingFlow(AffineCouplingFlow.Config(), (4, 6))
    z = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, logdet = flow(z)
    assert x.dtype == torch.float32 and torch.allclose(x, z, atol=1e-5) and float(logdet.abs().max()) < 1e-5


@pytest.mark.parametrize("params, shape", [({"kappa": 0.24, "lam": 0.0}, (8, 8)), ({"m2": 0.2, "lam0": 0.0}, (4, 6, 2))])
def test_free_field_layer_holds_the_exact_free_field(params, shape):
    """With ``g = K^(-1/2)`` (the values of :mod:`lattice_flows_phi4.flows.fourier`) the flow samples the free
    field exactly: every importance weight is the same, ESS = 1."""
    action = Phi4(**params)
    c, a, _ = action.coefficients(len(shape))
    flow = AffineCouplingFlow(AffineCouplingFlow.Config(n_layers=2, hidden=(3,)), shape).double()
    layer = flow.free_field
    with torch.no_grad():
        layer.log_amplitude.fill_(-0.5 * math.log(c))
        layer.propagator_weight.fill_(1.0)
        layer.log_mass2.fill_(math.log((2 * a - 2 * c * len(shape)) / c))
    z = action.sample_prior(256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64, device="cpu")
    with torch.no_grad():
        x, logdet = flow(z)
        log_w = -action(x) - (action.prior_log_prob(z) - logdet)
        assert float(log_w.std()) < 1e-10
        z2, logdet_inv = flow.inverse(x)
    assert torch.allclose(z2, z, atol=1e-12) and torch.allclose(logdet_inv, -logdet, atol=1e-12)
    # and its field has the exact <phi^2>: (1/V) sum_p g(p)^2
    with torch.no_grad():
        g2 = torch.exp(2 * layer.log_g())
    assert float(g2.mean()) == pytest.approx(exact.phi_squared(action, shape), rel=1e-12)


@pytest.mark.parametrize("shape", [(5, 4), (4, 4, 4, 4), (4, 3, 2), (0,)])
def test_flow_rejects_lattices_without_a_checkerboard(shape):
    with pytest.raises(ValueError, match=r"affine_coupling needs a lattice of 1 to 3 dimensions with even sizes"):
        AffineCouplingFlow.check_lattice(shape)


# -- physics ------------------------------------------------------------------------------------


def _run(spec, **settings):
    sim = Simulation.from_spec({**spec, **settings})
    table = sim.run(progress=False)
    return sim, sim.summary(table)


# Trajectory length 1.4 < pi / omega_max, omega_max^2 = 2 + 4 kappa D the largest eigenvalue of the free
# Hessian: a (nearly) harmonic mode with omega T = pi is mapped to minus itself whatever the momenta, so
# its amplitude never decorrelates and <phi^2> comes out wrong (T = 2 on 6x6 at kappa = 0.22 is such a case).
HMC = {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 7}}


def test_hmc_reproduces_the_free_field():
    spec = {
        "lattice": {"shape": [6, 6]},
        "action": {"name": "phi4", "kappa": 0.22, "lam": 0.0},
        "sampler": HMC,
        "observables": ["phi_squared", "susceptibility", "abs_magnetization", "magnetization", {"name": "two_point", "t": 2}],
    }
    _, summary = _run(spec, n_chains=64, n_thermalization=50, n_trajectories=600, seed=11)
    for quantity in ("phi_squared", "susceptibility", "abs_magnetization", "magnetization", "two_point(t=2)", "exp(-delta_H)"):
        row = summary.loc[quantity]
        assert row["reliable"], quantity
        assert abs(row["pull"]) < PULL, (quantity, row["mean"], row["error"], row["exact"])
    # the test has power: the errors are below 1% of the values
    assert summary.loc["phi_squared", "error"] < 0.01 * summary.loc["phi_squared", "exact"]
    assert summary.loc["susceptibility", "error"] < 0.02 * summary.loc["susceptibility", "exact"]


INTERACTING = {"lattice": {"shape": [6, 6]}, "action": {"name": "phi4", "kappa": 0.27, "lam": 0.1}}
FLOW = {"name": "affine_coupling", "n_layers": 4, "hidden": [8], "kernel_size": 3}


def _agree(a, b, quantity):
    (m1, e1), (m2, e2) = (a.loc[quantity, ["mean", "error"]], b.loc[quantity, ["mean", "error"]])
    assert abs(m1 - m2) < PULL * math.hypot(e1, e2), (quantity, m1, e1, m2, e2)


@pytest.fixture(scope="module")
def interacting_hmc():
    spec = {**INTERACTING, "sampler": HMC, "observables": ["abs_magnetization", "phi_squared"]}
    return _run(spec, n_chains=64, n_thermalization=100, n_trajectories=1000, seed=3)[1]


@pytest.fixture(scope="module")
def trained_flow_checkpoint(tmp_path_factory):
    """An affine_coupling flow trained for a few seconds at the interacting point (float32: the flow's
    convolutions are several times faster than in float64; ESS about 0.4)."""
    spec = {
        **INTERACTING,
        "flow": FLOW,
        "training": {"n_steps": 300, "batch_size": 64, "lr": 0.02},
        "sampler": HMC,
        "seed": 5,
        "dtype": "float32",
    }
    sim = Simulation.from_spec(spec)
    sim.train(progress=False)
    path = tmp_path_factory.mktemp("phi4") / "flow.pt"
    sim.save(path)
    return path


def test_fthmc_agrees_with_hmc_at_an_interacting_point(interacting_hmc, trained_flow_checkpoint):
    fthmc = {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 7}}
    sim = Simulation.load(
        trained_flow_checkpoint,
        sampler=fthmc,
        observables=["abs_magnetization", "phi_squared"],
        n_chains=64,
        n_thermalization=20,
        n_trajectories=100,
        seed=4,
    )
    summary = sim.summary(sim.run(progress=False))
    assert summary.loc["accepted", "mean"] > 0.5
    assert abs(summary.loc["exp(-delta_H)", "pull"]) < PULL
    for quantity in ("abs_magnetization", "phi_squared"):
        _agree(interacting_hmc, summary, quantity)


def test_flow_imh_agrees_with_hmc_at_an_interacting_point(interacting_hmc, trained_flow_checkpoint):
    sim = Simulation.load(
        trained_flow_checkpoint,
        sampler="flow_imh",
        observables=["abs_magnetization", "phi_squared"],
        n_chains=64,
        n_thermalization=50,
        n_trajectories=600,
        seed=6,
    )
    # Start from the flow's own samples: a hot start (white noise from the prior) has a larger importance
    # weight w = exp(-S) / q than any sample of the trained flow, so independence Metropolis would keep the
    # chains there for hundreds of updates (<|M|> 5 sigma low, <exp(-delta_H)> = 0.87).
    initial, _ = sim.sample_flow(64, torch.Generator().manual_seed(7))
    summary = sim.summary(sim.run(initial, progress=False))
    assert summary.loc["accepted", "mean"] > 0.3
    assert abs(summary.loc["exp(-delta_H)", "pull"]) < PULL
    for quantity in ("abs_magnetization", "phi_squared"):
        assert summary.loc[quantity, "reliable"], quantity
        _agree(interacting_hmc, summary, quantity)

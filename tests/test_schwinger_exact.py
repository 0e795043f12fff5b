"""The two-flavour Schwinger model's samplers against a reference that uses no Markov chain.

The reference (:mod:`lattice_flows_schwinger.reweighting`) reweights independent exact pure-gauge
configurations by ``det(D^dag D)``. Against it: HMC with pseudofermions (``schwinger``, plain and with
``even_odd = true``), HMC with the
exact determinant (``schwinger_det``), FTHMC through an untrained flow on ``schwinger``, and flow
independence Metropolis on ``schwinger_det`` (on ``schwinger`` its pseudofermion weights are too noisy for
an independent proposal: see ``test_flow_imh_with_pseudofermions_is_noisy``). Compared: plaquette,
``<Q^2>`` and ``Sigma = (1/V) Re tr D^{-1}``, within ``PULL`` combined standard errors, the chains' errors
from the Gamma method (``Simulation.summary``). Every chain starts from an exact *pure-gauge*
configuration, so a sampler that did not move to the fermions' distribution fails: the pure-gauge values
lie 4 to 16 combined errors away in the fast case (the test ``..._discriminate`` checks it). Fixed seeds.

Fast: 4x4, beta 2, mass 0.2. Slow (``--run-slow``): 4x4 at mass 0.1 and 6x6 at mass 0.3, longer runs.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from lattice_flows import Simulation
from lattice_flows_hmc.integrators import Leapfrog
from lattice_flows_schwinger.action import SchwingerPseudofermion
from lattice_flows_schwinger.dirac import dense_dirac, free_spectrum, log_det_normal
from lattice_flows_schwinger.reweighting import (
    chiral_condensate, log_weights, plaquette, reweight, reweighted_expectations,
)
from lattice_flows_u1 import exact as u1_exact
from lattice_flows_u1.exact_sampling import sample_exact

#: Combined standard errors a sampler's mean may lie from the reference.
PULL = 4.0
BETA = 2.0
OBSERVABLES = ("plaquette", "topological_charge^2", "chiral_condensate")


class CondensateSimulation(Simulation):
    """A simulation that also measures ``chiral_condensate`` (``Sigma``, dense and exact) on every configuration:
    a local stand-in until the plugin has the observable."""

    def measure(self, x, generator=None):
        values = super().measure(x, generator)
        values["chiral_condensate"] = chiral_condensate(x, self.action.mass)
        return values


# --------------------------------------------------------------------------- the reweighting itself


def test_dense_matrices_in_chunks_and_log_weights_are_the_plugins():
    x = sample_exact(BETA, 20, (4, 6), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = dense_dirac(x, 0.2)  # 20 configurations: two chunks, each the same as one configuration at a time
    assert torch.equal(d, torch.cat([dense_dirac(x[i : i + 1], 0.2) for i in range(20)]))
    assert torch.allclose(log_weights(x, 0.2, dirac=d), log_det_normal(x, 0.2), rtol=0, atol=1e-12)


def test_chiral_condensate_of_the_free_field_is_the_free_spectrums():
    shape, mass = (4, 6), 0.3
    expected = (1.0 / free_spectrum(shape, mass)).sum().real / math.prod(shape)
    got = chiral_condensate(torch.zeros(1, 2, *shape, dtype=torch.float64), mass)
    assert abs(float(got) - float(expected)) < 1e-12


def test_reweighting_pure_gauge_to_another_beta_gives_the_exact_plaquette():
    # w = exp((beta' - beta) sum_P cos x_P) carries exp(-S_G) at beta to beta': an exact answer to compare with
    shape, target = (4, 4), 2.4
    x = sample_exact(BETA, 4000, shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = plaquette(x)
    result = reweight({"plaquette": p}, (target - BETA) * math.prod(shape) * p)
    v = result["plaquette"]
    assert result.warning == "" and 0.5 < result.ess_fraction < 1.0
    assert abs(v.error / v.jackknife_error - 1) < 0.02
    assert abs(v.mean - u1_exact.plaquette(target, shape)) < PULL * v.error
    assert abs(v.unweighted_mean - u1_exact.plaquette(BETA, shape)) < PULL * v.unweighted_error
    assert abs(v.mean - v.unweighted_mean) > 10 * v.error  # the weights did something


def test_reweighting_warns_on_heavy_tailed_weights():
    g = np.random.default_rng(0)
    o = g.normal(size=2000)
    assert reweight({"o": o}, np.zeros(2000)).warning == ""
    heavy = reweight({"o": o}, 4.0 * g.normal(size=2000))  # ESS ~ n e^{-16}: a handful of samples
    assert heavy.ess < 20 and "unreliable" in heavy.warning and "ESS" in heavy.warning
    with pytest.raises(ValueError, match="not finite"):
        reweight({"o": o}, np.full(2000, np.inf))


# --------------------------------------------------------------------------- the samplers

# Untrained plaquette-Poisson flows started as von Mises maps (pure gauge, infinite volume): for FTHMC from
# exp(cos u) latent plaquettes (from uniform ones its latent force is stiff: acceptance 0.2 at step 0.1);
# for independence proposals from the uniform prior, the map that starts there (latent_beta 0).
FTHMC_FLOW = {"name": "u1_plaquette_poisson", "n_bins": 32, "von_mises_beta": 2.0, "latent_beta": 1.0}
IMH_FLOW = {"name": "u1_plaquette_poisson", "n_bins": 32, "von_mises_beta": 2.0, "latent_beta": 0.0}


def sampler_spec(kind: str, shape, mass: float, scale: int) -> dict:
    """The spec of sampler ``kind`` (``hmc``, ``hmc_det``, ``fthmc``, ``flow_imh``); ``scale`` multiplies the
    measured trajectories (1: the fast suite)."""
    leapfrog = {"name": "leapfrog", "step_size": 0.3, "n_steps": 3}
    runs = {  # action, sampler, flow, chains, thermalization, trajectories at scale 1
        "hmc": ("schwinger", {"name": "hmc", "integrator": leapfrog}, None, 40, 4, 64),
        "hmc_even_odd": ("schwinger", {"name": "hmc", "integrator": leapfrog}, None, 40, 4, 64),
        "hmc_det": ("schwinger_det", {"name": "hmc", "integrator": leapfrog}, None, 16, 4, 40),
        "fthmc": ("schwinger", {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}}, FTHMC_FLOW, 32, 4, 20),
        "flow_imh": ("schwinger_det", {"name": "flow_imh"}, IMH_FLOW, 48, 10, 80),
    }
    action, sampler, flow, chains, therm, traj = runs[kind]
    spec = {
        "lattice": {"shape": list(shape)},
        "action": {"name": action, "beta": BETA, "mass": mass, **({"even_odd": True} if kind.endswith("even_odd") else {})},
        "sampler": sampler,
        "observables": ["plaquette", "topological_charge"],
        "n_chains": chains,
        "n_thermalization": therm,
        "n_trajectories": traj * scale,
        "seed": 11,
        "dtype": "float64",
    }
    if flow is not None:
        spec["flow"] = flow
    return spec


@functools.lru_cache(maxsize=None)
def reference(shape, mass, n):
    return reweighted_expectations(BETA, mass, shape, n, generator=torch.Generator().manual_seed(7))


@functools.lru_cache(maxsize=None)
def summary(kind, shape, mass, scale):
    """``Simulation.summary`` of a run of ``kind`` started from exact pure-gauge configurations."""
    sim = CondensateSimulation.from_spec(sampler_spec(kind, shape, mass, scale))
    start = sample_exact(BETA, sim.settings.n_chains, shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return sim.summary(sim.run(start, progress=False))


def check_against_reference(kind, shape, mass, scale, n_reference):
    ref = reference(shape, mass, n_reference)
    assert ref.warning == "", ref.warning
    s = summary(kind, shape, mass, scale)
    lines = []
    for name in OBSERVABLES:
        row, r = s.loc[name], ref[name]
        combined = math.hypot(row["error"], r.error)
        lines.append(
            f"{name}: {kind} {row['mean']:.5f} +- {row['error']:.5f} (tau_int {row['tau_int']:.2f}) vs reweighting "
            f"{r.mean:.5f} +- {r.error:.5f}: {(row['mean'] - r.mean) / combined:+.2f} sigma"
        )
        assert row["reliable"], f"{name}: {row['note']}"
        assert abs(row["mean"] - r.mean) < PULL * combined, "\n".join(lines)
    print("\n".join(lines))
    return s, ref


FAST = ((4, 4), 0.2, 1, 4000)
SLOW = [((4, 4), 0.1, 4, 20000), ((6, 6), 0.3, 4, 20000)]
SAMPLERS = ["hmc", "hmc_even_odd", "hmc_det", "fthmc", "flow_imh"]


@pytest.mark.parametrize("kind", SAMPLERS)
def test_samplers_agree_with_reweighting(kind):
    check_against_reference(kind, *FAST)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=lambda c: f"{c[0][0]}x{c[0][1]}-m{c[1]}")
@pytest.mark.parametrize("kind", SAMPLERS)
def test_samplers_agree_with_reweighting_long(kind, case):
    check_against_reference(kind, *case)


def test_the_fast_comparison_would_catch_a_pure_gauge_sampler():
    # the chains start from pure-gauge configurations: without the fermions' weight the values would be these
    # (plaquette and Sigma; <Q^2> moves by about 3.5 combined errors only, the slow cases test it closer)
    ref = reference(*FAST[:2], FAST[3])
    s = summary("hmc", *FAST[:3])
    for name in ("plaquette", "chiral_condensate"):
        r = ref[name]
        assert abs(r.unweighted_mean - r.mean) > PULL * math.hypot(r.unweighted_error, s.loc[name, "error"]), name


@pytest.mark.parametrize("kind", ["hmc", "hmc_even_odd", "hmc_det"])
def test_hmc_energy_identity(kind):
    # <exp(-delta_H)> = 1 for an exact, area-preserving and reversible update (Creutz)
    s = summary(kind, *FAST[:3])
    assert 0.6 < s.loc["accepted", "mean"] < 1.0
    for row in ("exp(-delta_H)", "delta_H_identity(K=2)"):
        r = s.loc[row]
        assert r["reliable"], f"{row}: {r['note']}"
        assert r["error"] < 0.02 and abs(r["mean"] - 1.0) < PULL * r["error"], f"{row}: {r['mean']:.4f} +- {r['error']:.4f}"


# --------------------------------------------------------------------------- pseudofermion trajectories


@pytest.mark.parametrize("cg_tol", [1e-6, 1e-10])
def test_pseudofermion_trajectory_is_reversible(cg_tol):
    action = SchwingerPseudofermion(beta=BETA, mass=0.1, cg_tol=cg_tol)
    g = torch.Generator().manual_seed(4)
    x0 = sample_exact(BETA, 4, (4, 4), generator=g, dtype=torch.float64)
    dynamics = action.refresh(x0, g)
    v0 = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    integrator = Leapfrog(step_size=0.2, n_steps=5)
    x1, v1 = integrator.integrate(x0, v0, dynamics.force)
    assert (x1 - x0).abs().max() > 0.1  # it went somewhere
    x2, v2 = integrator.integrate(x1, -v1, dynamics.force)
    # every solve starts from 0, so the force is a function of x alone and the reversal is exact up to
    # round-off and the solver's tolerance (where a solve takes a different number of iterations)
    assert float((x2 - x0).abs().max()) < 10 * cg_tol
    assert float((v2 + v0).abs().max()) < 10 * cg_tol
    h0 = 0.5 * (v0 * v0).flatten(1).sum(1) + dynamics(x0)
    h2 = 0.5 * (v2 * v2).flatten(1).sum(1) + dynamics(x2)
    assert float((h2 - h0).abs().max()) < 100 * cg_tol


def test_flow_imh_with_pseudofermions_is_noisy():
    # Why flow_imh is tested on schwinger_det: with pseudofermions phi = D^dag(x) eta drawn at the current x,
    # an independent proposal x' pays S_F(x') - S_F(x) = eta^dag (K K^dag - 1) eta, K = D(x) D(x')^{-1}, whose
    # typical size (~40 on 4x4) dwarfs the exact log-determinant ratio (~1): almost nothing is accepted.
    sim = Simulation.from_spec({**sampler_spec("flow_imh", (4, 4), 0.2, 1), "action": {"name": "schwinger", "beta": BETA, "mass": 0.2},
                                "n_chains": 16, "n_thermalization": 0, "n_trajectories": 5})
    start = sample_exact(BETA, 16, (4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    table = sim.run(start, progress=False)
    assert table["delta_H"].median() > 10 and table["accepted"].mean() < 0.05

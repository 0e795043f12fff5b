"""The fermion observables of the Schwinger model (chiral condensate, pion correlator and its effective mass) against
exact statements: the free field in momentum space and by a dense inverse, exact against stochastic estimates within
their standard errors, gauge invariance (the contract kit), and the core hooks they need (``applies_to``,
stochastic observables with their own measurement generator, saved in the chains checkpoint)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lattice_flows import Simulation, testing
from lattice_flows.errors import SpecError
from lattice_flows.run_builder import default_observables
from lattice_flows.run_settings import MEASUREMENT_SEED_OFFSET
from lattice_flows.spec import build_component

from lattice_flows_schwinger.action import SchwingerDeterminant, SchwingerPseudofermion
from lattice_flows_schwinger.dirac import dense_dirac
from lattice_flows_schwinger.observables import (
    ChiralCondensate, PionCorrelator, effective_mass_rows, free_condensate, free_pion_correlator, free_propagator,
)

torch.set_num_threads(1)

F64 = torch.float64


def _fields(action, shape, n, seed):
    return action.sample_prior(n, shape, generator=torch.Generator().manual_seed(seed), dtype=F64, device="cpu")


def _dense_point_source(x, mass):
    """``D^{-1}(n, 0)`` of the dense inverse, ``(B, sink spin, source spin, L_0, L_1)``."""
    b, shape, volume = x.shape[0], tuple(x.shape[2:]), math.prod(x.shape[2:])
    inverse = torch.linalg.inv(dense_dirac(x, mass)).reshape(b, 2, *shape, 2, volume)[..., 0]  # source site 0
    return inverse.permute(0, 1, 4, 2, 3)


# -- the free field ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,mass", [((4, 4), 0.1), ((6, 4), 0.5), ((3, 5), -0.3)])
def test_free_field_against_the_momentum_space_propagator(shape, mass):
    action = SchwingerDeterminant(beta=1.0, mass=mass)
    x = torch.zeros(1, 2, *shape, dtype=F64)
    dense = _dense_point_source(x, mass)[0]
    assert torch.allclose(dense, free_propagator(shape, mass), atol=1e-13)
    exact = ChiralCondensate(method="exact", action=action, lattice_shape=shape)
    assert float(exact(x)) == pytest.approx(free_condensate(shape, mass), rel=1e-12)
    # 2 a / (a^2 + sum sin^2) per momentum, written out
    total = 0.0
    for k0 in range(shape[0]):
        for k1 in range(shape[1]):
            p0, p1 = (2 * k0 + 1) * math.pi / shape[0], 2 * math.pi * k1 / shape[1]
            a = mass + (1 - math.cos(p0)) + (1 - math.cos(p1))
            total += 2 * a / (a * a + math.sin(p0) ** 2 + math.sin(p1) ** 2)
    assert free_condensate(shape, mass) == pytest.approx(total / math.prod(shape), rel=1e-12)
    correlator = torch.stack([PionCorrelator(t=t, action=action, lattice_shape=shape)(x)[0] for t in range(shape[0])])
    free = free_pion_correlator(shape, mass)
    assert torch.allclose(correlator, free, rtol=1e-8)  # CG to 1e-10 on D^dag D
    assert torch.allclose(free, torch.roll(free.flip(0), 1), rtol=1e-12)  # C(t) = C(L_0 - t)


def test_the_pion_correlator_of_a_random_field_is_the_dense_one():
    shape, mass = (4, 6), 0.2
    action = SchwingerPseudofermion(beta=2.0, mass=mass)
    x = _fields(action, shape, 3, 1)
    dense = _dense_point_source(x, mass).abs().square().sum(dim=(1, 2, 4))  # (B, L_0)
    measured = torch.stack([PionCorrelator(t=t, action=action, lattice_shape=shape)(x) for t in range(shape[0])], 1)
    assert torch.allclose(measured, dense, rtol=1e-7)
    # each configuration alone gives the value it has in the batch (the shared solves are per configuration)
    alone = PionCorrelator(t=2, action=action, lattice_shape=shape)(x[1:2])
    assert float(alone[0]) == pytest.approx(float(measured[1, 2]), rel=1e-9)


# -- exact against stochastic --------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["z2", "gaussian"])
def test_stochastic_condensate_agrees_with_the_exact_one_within_its_errors(noise):
    shape, mass = (4, 6), 0.3
    action = SchwingerPseudofermion(beta=2.0, mass=mass)
    x = _fields(action, shape, 3, 2)
    exact = ChiralCondensate(method="exact", action=action, lattice_shape=shape)(x)
    stochastic = ChiralCondensate(method="stochastic", n_sources=16, noise=noise, action=action, lattice_shape=shape)
    generator = torch.Generator().manual_seed(5)
    repeats = torch.stack([stochastic(x, generator) for _ in range(24)])  # (24, B): independent estimates
    mean, error = repeats.mean(0), repeats.std(0) / math.sqrt(repeats.shape[0])
    assert bool((error > 0).all())
    pulls = (mean - exact) / error
    assert float(pulls.abs().max()) < 4.5, pulls


def test_auto_is_exact_up_to_16x16_and_exact_is_refused_above_32x32():
    action = SchwingerPseudofermion(beta=2.0, mass=0.2)
    assert ChiralCondensate(action=action, lattice_shape=(16, 16)).resolved_method == "exact"
    assert not ChiralCondensate(action=action, lattice_shape=(16, 16)).stochastic
    assert ChiralCondensate(action=action, lattice_shape=(16, 18)).stochastic
    context = {"action": action, "lattice_shape": (40, 32)}
    with pytest.raises(SpecError, match=r"\['method'\]: 'exact' needs the dense 2560 x 2560 Dirac matrix.*at most 1024"):
        build_component("observables", {"name": "chiral_condensate", "method": "exact"}, "spec['observables'][0]", context)


# -- the contract kit: gauge invariance, batch independence, the stochastic contract --------------------


@pytest.mark.parametrize("action_cls", [SchwingerPseudofermion, SchwingerDeterminant])
@pytest.mark.parametrize("observable,params", [
    (ChiralCondensate, {"method": "exact"}), (PionCorrelator, {"t": 0}), (PionCorrelator, {"t": 2}),
])
def test_the_contract_kit_passes_and_checks_gauge_invariance(action_cls, observable, params):
    ran = testing.check_observable(observable, action_cls, params=params)
    assert "symmetry_invariance" in ran and "batch_independence" in ran and "applies_to" in ran


def test_the_stochastic_condensate_passes_the_stochastic_contract():
    ran = testing.check_observable(ChiralCondensate, SchwingerPseudofermion, params={"method": "stochastic", "n_sources": 2})
    assert ran == ["theory", "applies_to", "shape_device", "reproducible", "own_generator"]


def test_the_kit_refuses_a_pair_the_observable_does_not_apply_to():
    from lattice_flows_u1.action import U1Wilson

    assert not testing.observable_applies(ChiralCondensate, U1Wilson)
    assert testing.observable_applies(ChiralCondensate, SchwingerDeterminant(beta=1.0, mass=0.1))
    with pytest.raises(testing.ContractError, match="applies_to: does not apply to u1_wilson"):
        testing.check_observable(ChiralCondensate, U1Wilson)


# -- applies_to in spec building ------------------------------------------------------------------------


def _spec(**changes):
    spec = {
        "lattice": {"shape": [4, 4]},
        "action": {"name": "schwinger", "beta": 2.0, "mass": 0.3},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 3}},
        "observables": ["plaquette", {"name": "chiral_condensate", "method": "stochastic", "n_sources": 2,
                                      "column": "sigma"}],
        "n_chains": 2, "n_thermalization": 2, "n_trajectories": 6, "seed": 3,
    }
    spec.update(changes)
    return spec


def test_a_fermion_observable_is_refused_for_a_pure_gauge_action_and_left_out_of_its_defaults():
    spec = _spec(action={"name": "u1_wilson", "beta": 2.0}, observables=["plaquette", "chiral_condensate"])
    with pytest.raises(SpecError, match=r"spec\['observables'\]\[1\]: observable 'chiral_condensate' does not apply to the "
                       r"action 'u1_wilson': it needs a Schwinger-model action .*; observables for u1_wilson: .*plaquette"):
        Simulation.from_spec(spec)
    wilson = build_component("actions", {"name": "u1_wilson", "beta": 2.0}, "test", {})
    assert "chiral_condensate" not in default_observables(wilson, {"action": wilson, "lattice_shape": (4, 4)})
    schwinger = build_component("actions", {"name": "schwinger", "beta": 2.0, "mass": 0.3}, "test", {})
    defaults = default_observables(schwinger, {"action": schwinger, "lattice_shape": (4, 4)})
    assert {"chiral_condensate", "plaquette", "topological_charge"} <= set(defaults)
    assert "pion_correlator" not in defaults  # needs t


# -- stochastic observables: the measurement generator ---------------------------------------------------


def test_a_stochastic_observable_does_not_change_the_chain_and_a_seed_gives_the_same_table():
    table = Simulation.from_spec(_spec()).run(progress=False)
    plain = Simulation.from_spec(_spec(observables=["plaquette"])).run(progress=False)
    pd.testing.assert_frame_equal(table.drop(columns=["sigma"]), plain)
    again = Simulation.from_spec(_spec()).run(progress=False)
    pd.testing.assert_frame_equal(table, again)
    assert table["sigma"].nunique() == len(table)  # every measurement draws new noise
    sim = Simulation.from_spec(_spec())
    assert sim.measurement_generator().initial_seed() == 3 + MEASUREMENT_SEED_OFFSET


def test_a_run_with_a_stochastic_observable_resumes_row_for_row(tmp_path):
    from lattice_flows.checkpoint import load_checkpoint
    from lattice_flows.simulation import RunInterrupted

    spec = _spec(n_trajectories=8)
    whole = Simulation.from_spec(spec).run(progress=False)
    calls = []
    with pytest.raises(RunInterrupted):
        Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt", checkpoint_every=2, progress=False,
                                       should_stop=lambda: len(calls.append(1) or calls) == 6)
    assert "measurement_generator" in load_checkpoint(tmp_path / "c.pt")["ranks"][0]
    resumed = Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt", progress=False)
    pd.testing.assert_frame_equal(whole, resumed)


def test_a_checkpoint_without_the_measurement_generator_still_resumes(tmp_path):
    from lattice_flows.checkpoint import load_checkpoint, save_atomic
    from lattice_flows.simulation import RunInterrupted

    spec = _spec(observables=["plaquette"], n_trajectories=8)
    whole = Simulation.from_spec(spec).run(progress=False)
    calls = []
    with pytest.raises(RunInterrupted):
        Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt", checkpoint_every=2, progress=False,
                                       should_stop=lambda: len(calls.append(1) or calls) == 5)
    state = load_checkpoint(tmp_path / "c.pt")
    for part in state["ranks"]:
        part.pop("measurement_generator")
    save_atomic(state, tmp_path / "c.pt")  # as written before the key existed
    resumed = Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt", progress=False)
    pd.testing.assert_frame_equal(whole, resumed)


# -- the effective mass -------------------------------------------------------------------------------


def _correlator_table(length, mass, n_chains, n_per_chain, noise, seed=0, amplitude=1.0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    exact = amplitude * np.cosh(mass * (t - length / 2))
    rows = {"chain": np.repeat(np.arange(n_chains), n_per_chain), "trajectory": np.tile(np.arange(n_per_chain), n_chains)}
    common = rng.normal(size=n_chains * n_per_chain)  # correlated between the t, as a real correlator is
    for s in t:
        rows[f"C{s}"] = exact[s] * (1 + noise * (0.7 * common + 0.7 * rng.normal(size=n_chains * n_per_chain)))
    return pd.DataFrame(rows), {int(s): f"C{s}" for s in t}


def test_the_effective_mass_of_a_cosh_is_its_mass_within_errors():
    table, by_t = _correlator_table(8, 0.6, 4, 400, 0.02)
    rows = effective_mass_rows(table, by_t, 8, prefix="m")
    assert list(rows.index) == ["m(t=1)", "m(t=2)", "m(t=3)", "m(t=4)"]
    pulls = (rows["mean"] - 0.6) / rows["error"]
    assert bool(rows["reliable"].all()) and float(pulls.abs().max()) < 4.5, rows
    assert float(rows["error"].max()) < 0.05


def test_the_effective_mass_says_when_it_cannot_be_trusted():
    for seed in range(3):  # noise 300% of the signal on 64 measurements: what is called reliable is right
        table, by_t = _correlator_table(8, 0.6, 4, 16, 3.0, seed=seed)
        rows = effective_mass_rows(table, by_t, 8, prefix="m")
        assert not bool(rows["reliable"].all())
        bad = rows[~rows["reliable"]]
        assert bad["note"].str.contains("errors too large|no effective mass|no cosh|no error").all(), bad["note"]
        good = rows[rows["reliable"]]
        assert bool((((good["mean"] - 0.6) / good["error"]).abs() < 4.5).all())
    table, by_t = _correlator_table(8, 0.6, 4, 400, 0.02)
    table["C4"] = -table["C4"]
    rows = effective_mass_rows(table, by_t, 8, prefix="m")
    assert "is not positive" in rows.loc["m(t=4)", "note"]


def test_the_summary_shows_the_pion_effective_mass():
    spec = _spec(observables=[{"name": "pion_correlator", "t": t} for t in range(4)] + ["chiral_condensate"],
                 n_trajectories=6)
    sim = Simulation.from_spec(spec)
    table = sim.run(progress=False)
    summary = sim.summary(table)
    assert {"pion_effective_mass(t=1)", "pion_effective_mass(t=2)"} <= set(summary.index)
    assert "chiral_condensate(method=auto,n_sources=8,noise=z2)" in summary.index
    from lattice_flows.cli import format_summary

    assert "pion_effective_mass(t=1)" in format_summary(summary)
    assert summary["window"].dtype.kind == "i" and summary["n_samples"].dtype.kind == "i"
    assert summary.loc["pion_effective_mass(t=1)", "n_samples"] == 2 * 6


def test_sources_beyond_one_chunk_are_the_same_estimator():
    """n_sources above SOURCE_CHUNK: solved chunk by chunk, the mean of all of them (72 = 64 + 8)."""
    shape = (4, 4)
    action = SchwingerDeterminant(beta=1.0, mass=0.4)
    x = _fields(action, shape, 2, 9)
    many = ChiralCondensate(method="stochastic", n_sources=72, action=action, lattice_shape=shape)
    first = ChiralCondensate(method="stochastic", n_sources=64, action=action, lattice_shape=shape)
    rest = ChiralCondensate(method="stochastic", n_sources=8, action=action, lattice_shape=shape)
    g = torch.Generator().manual_seed(4)
    combined = (64 * first(x, g) + 8 * rest(x, g)) / 72
    assert torch.allclose(many(x, torch.Generator().manual_seed(4)), combined, rtol=1e-12)

"""Simulation specs: building, round trips, reproducibility, and every mistake named by its path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lattice_flows import Simulation, SpecError
from lattice_flows.cli import DEFAULT_SPEC, main
from lattice_flows.specfile import apply_overrides, load_spec


def small_spec(**changes):
    spec = {
        "lattice": {"shape": [4, 6]},
        "action": {"name": "u1_wilson", "beta": 2.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": 3,
        "n_thermalization": 5,
        "n_trajectories": 7,
        "seed": 1,
        "device": "cpu",
        "dtype": "float64",
    }
    spec.update(changes)
    return spec


def test_issue_contract_spec_builds_and_exposes_parts():
    spec = {
        "lattice": {"shape": [16, 16]},
        "action": {"name": "u1_wilson", "beta": 3.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": 64,
        "n_thermalization": 100,
        "n_trajectories": 1000,
        "seed": 1,
        "device": "cpu",
        "dtype": "float64",
    }
    sim = Simulation.from_spec(spec)
    x = torch.zeros(5, 2, 16, 16, dtype=torch.float64)
    assert sim.action(x).shape == (5,)
    assert set(sim.observables) == {"plaquette", "topological_charge"}
    assert sim.observables["plaquette"](x).shape == (5,)
    assert torch.all(sim.observables["plaquette"](x) == 1)


def test_to_spec_round_trips():
    spec = small_spec(observables=["plaquette", {"name": "wilson_loop", "R": 2, "T": 1}, {"name": "action_density", "column": "s"}])
    sim = Simulation.from_spec(spec)
    out = sim.to_spec()
    assert Simulation.from_spec(out) == sim
    assert Simulation.from_spec(out).to_spec() == out
    assert out["sampler"]["integrator"] == {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}
    assert out["start"] == "hot"  # defaults are written out
    assert json.loads(json.dumps(out)) == out  # plain data, serialisable
    assert list(sim.observables) == ["plaquette", "wilson_loop(R=2,T=1)", "s"]
    assert sim != Simulation.from_spec(small_spec(seed=2))


def test_table_columns_and_types():
    sim = Simulation.from_spec(small_spec())
    table = sim.run()
    assert list(table.columns) == ["chain", "trajectory", "accepted", "delta_H", "plaquette", "topological_charge"]
    assert len(table) == 3 * 7
    assert table["accepted"].dtype == bool
    assert table["topological_charge"].dtype == np.int64
    assert list(table["chain"]) == [c for c in range(3) for _ in range(7)]
    assert list(table["trajectory"]) == list(range(7)) * 3


def test_same_spec_and_seed_same_table_bit_for_bit():
    a = Simulation.from_spec(small_spec()).run()
    b = Simulation.from_spec(small_spec()).run()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = Simulation.from_spec(small_spec(seed=2)).run()
    assert not a["plaquette"].equals(c["plaquette"])


def test_default_observables_are_the_theorys_parameter_free_ones():
    spec = small_spec()
    del spec["observables"]
    sim = Simulation.from_spec(spec)
    assert set(sim.observables) == {"plaquette", "topological_charge", "action_density"}


def test_float32_and_cold_start():
    sim = Simulation.from_spec(small_spec(dtype="float32", start="cold", n_thermalization=0, n_trajectories=1))
    x = sim.initial_fields(sim.generator())
    assert x.dtype == torch.float32 and torch.all(x == 0)
    assert sim.run()["plaquette"].dtype == np.float32


def test_run_from_given_fields():
    sim = Simulation.from_spec(small_spec(n_thermalization=0, n_trajectories=1, sampler={"name": "u1_exact"}))
    n, shape = sim.settings.n_chains, sim.action.field_shape(sim.lattice_shape)
    cold = Simulation.from_spec(small_spec(n_thermalization=0, n_trajectories=1, start="cold"))
    ordered = cold.run(initial=torch.zeros(n, *shape))
    assert ordered.equals(cold.run())
    with pytest.raises(ValueError, match=r"expected fields of shape \(3, 2, 4, 6\) .*got \(2, 2, 4, 6\)"):
        sim.run(initial=torch.zeros(2, *shape))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, r"spec: unknown key 'bogus'; accepted: lattice, action, flow, training, sampler, observables, n_chains"),
        ({"action": {"name": "u1_wilson", "bta": 3.0}}, r"spec\['action'\]: unknown parameter 'bta' for u1_wilson; accepted: beta"),
        ({"action": {"name": "u1_wilson"}}, r"spec\['action'\]: missing parameter 'beta' for u1_wilson"),
        ({"action": {"name": "u1_wilsn", "beta": 1.0}}, r"spec\['action'\]: unknown action 'u1_wilsn'; available actions: (\w+, )*u1_wilson"),
        ({"action": {"beta": 1.0}}, r"spec\['action'\]: missing key 'name'; available actions: (\w+, )*u1_wilson"),
        ({"action": {"name": "u1_wilson", "beta": -1.0}}, r"spec\['action'\]\['beta'\]: expected a number > 0.0 and <= 10000.0, got -1.0"),
        ({"action": {"name": "u1_wilson", "beta": 0}}, r"spec\['action'\]\['beta'\]: expected a number > 0.0 and <= 10000.0, got 0.0"),
        ({"action": {"name": "u1_wilson", "beta": "3"}}, r"spec\['action'\]\['beta'\]: expected a number > 0.0 and <= 10000.0, got '3' \(str\)"),
        ({"action": {"name": "u1_wilson", "beta": float("nan")}}, r"spec\['action'\]\['beta'\]: expected a number > 0.0 and <= 10000.0, got nan"),
        ({"action": 3}, r"spec\['action'\]: expected a table"),
        (
            {"sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.0, "n_steps": 5}}},
            r"spec\['sampler'\]\['integrator'\]\['step_size'\]: expected a number > 0.0, got 0.0",
        ),
        (
            {"sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2.0}}},
            r"spec\['sampler'\]\['integrator'\]\['n_steps'\]: expected an integer >= 1, got 2.0 \(float\)",
        ),
        ({"sampler": {"name": "hmc"}}, r"spec\['sampler'\]: missing parameter 'integrator' for hmc"),
        ({"sampler": {"name": "hmc", "integrator": "verlet"}}, r"spec\['sampler'\]\['integrator'\]: unknown integrator 'verlet'; available integrators: leapfrog, nested_leapfrog, omelyan"),
        ({"sampler": {"name": "hmc", "integrator": {"name": "omelyan", "step_size": 0.1, "n_steps": 2, "lam": 0.7}}}, r"\['lam'\]: expected a number > 0.0 and < 0.5, got 0.7"),
        ({"lattice": {"shape": [4, 0]}}, r"spec\['lattice'\]\['shape'\]: expected a list of positive integers"),
        ({"lattice": {"shape": [4, 4, 4]}}, r"spec\['lattice'\]\['shape'\]: u1_wilson is a 2D theory"),
        ({"lattice": {"shape": [4, 4], "boundary": "periodic"}}, r"spec\['lattice'\]: unknown key 'boundary'; accepted: shape"),
        ({"lattice": {}}, r"spec\['lattice'\]: missing key 'shape'"),
        ({"observables": ["plaquete"]}, r"spec\['observables'\]\[0\]: unknown observable 'plaquete'; available observables: (\w+, )*action_density, (\w+, )*plaquette"),
        ({"observables": "plaquette"}, r"spec\['observables'\]: expected a list"),
        ({"observables": ["plaquette", "plaquette"]}, r"column name 'plaquette' is used twice"),
        ({"observables": [{"name": "wilson_loop", "R": 2}]}, r"spec\['observables'\]\[0\]: missing parameter 'T' for wilson_loop"),
        ({"observables": [{"name": "wilson_loop", "R": 9, "T": 1}]}, r"spec\['observables'\]\[0\]\['R'\]: expected at most L_0 = 4, got 9"),
        ({"n_chains": 0}, r"spec\['n_chains'\]: expected an integer >= 1, got 0"),
        ({"n_trajectories": True}, r"spec\['n_trajectories'\]: expected an integer >= 1, got True \(bool\)"),
        ({"seed": -1}, r"spec\['seed'\]: expected an integer >= 0 and < 4611686018427387904, got -1"),
        ({"dtype": "float16"}, r"spec\['dtype'\]: expected one of 'float32', 'float64', got 'float16'"),
        ({"device": "tpu"}, r"spec\['device'\]: expected a device name"),
        ({"start": "warm"}, r"spec\['start'\]: expected one of 'hot', 'cold', got 'warm'"),
    ],
)
def test_spec_mistakes_name_path_and_expectation(change, message):
    with pytest.raises(SpecError, match=message):
        Simulation.from_spec(small_spec(**change))


def test_missing_top_level_key():
    spec = small_spec()
    del spec["sampler"]
    with pytest.raises(SpecError, match=r"spec: missing key 'sampler'; required: lattice, action, sampler"):
        Simulation.from_spec(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_cuda_is_a_spec_error():
    with pytest.raises(SpecError, match=r"spec\['device'\]: device 'cuda' requested but CUDA is not available"):
        Simulation.from_spec(small_spec(device="cuda"))


def test_u1_exact_refuses_other_actions_is_checked_at_build_time():
    sim = Simulation.from_spec(small_spec(sampler="u1_exact"))
    assert sim.to_spec()["sampler"] == {"name": "u1_exact"}


def test_spec_files_in_every_format(tmp_path):
    spec = small_spec()
    (tmp_path / "s.json").write_text(json.dumps(spec))
    toml = """
n_chains = 3
n_thermalization = 5
n_trajectories = 7
seed = 1
observables = ["plaquette", "topological_charge"]
[lattice]
shape = [4, 6]
[action]
name = "u1_wilson"
beta = 2.0
[sampler]
name = "hmc"
integrator = { name = "leapfrog", step_size = 0.2, n_steps = 5 }
"""
    (tmp_path / "s.toml").write_text(toml)
    yaml = pytest.importorskip("yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    sims = [Simulation.from_spec(load_spec(tmp_path / f"s.{ext}")) for ext in ("json", "toml", "yaml")]
    assert sims[0] == sims[1] == sims[2]
    (tmp_path / "bad.toml").write_text("lattice = [")
    with pytest.raises(SpecError, match=r"bad.toml: malformed TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(SpecError, match=r"cannot read the spec file"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match=r"unknown spec format '.txt'"):
        load_spec(tmp_path / "s.txt")


def test_overrides():
    spec = apply_overrides(small_spec(), ["action.beta=3", "lattice.shape=[8, 8]", "sampler.integrator.name=omelyan"])
    assert spec["action"]["beta"] == 3 and spec["lattice"]["shape"] == [8, 8]
    assert spec["sampler"]["integrator"]["name"] == "omelyan"
    with pytest.raises(SpecError, match=r"expected KEY.PATH=VALUE"):
        apply_overrides(spec, ["action.beta"])


def test_default_spec_is_valid():
    sim = Simulation.from_spec(DEFAULT_SPEC)
    assert sim.action.beta == 3.0


def test_cli_run_prints_summary_with_exact_values(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(small_spec(n_trajectories=50)))
    assert main(["run", str(path), "--set", "n_chains=2", "--out", str(tmp_path / "run"), "--csv", "--quiet"]) == 0
    out = capsys.readouterr().out
    for word in ("plaquette", "topological_charge^2", "exp(-delta_H)", "exact", "tau_int"):
        assert word in out
    assert len(pd.read_csv(tmp_path / "run" / "table.csv")) == 100


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(small_spec(action={"name": "u1_wilson", "bta": 1})))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown parameter 'bta'" in err
    assert main(["run", str(tmp_path / "nope.toml")]) == 2

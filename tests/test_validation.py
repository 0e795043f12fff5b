"""Validation before anything runs: every bad value is a spec or argument error naming the path and the
allowed range, raised before a run folder exists; a run that cannot fit in memory says so with the
estimate; an out-of-memory during a run is a one-line error with exit status 2 (issue 13, item 4)."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch

from lattice_flows import Simulation, resources
from lattice_flows.cli import main
from lattice_flows.errors import ParameterError, SpecError
from lattice_flows.params import INT64_MAX
from lattice_flows.reference import _parameter_class
from lattice_flows.registry import REGISTRIES
from lattice_flows.simulation import FLOW_INIT_SEED_OFFSET, MEASUREMENT_SEED_OFFSET, TRAINING_SEED_OFFSET, RunSettings
from lattice_flows.training import TrainingSettings

from benchmark_scripts import load_benchmark

U1 = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 2.0},
    "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
    "observables": ["plaquette"],
    "n_chains": 2,
    "n_thermalization": 2,
    "n_trajectories": 4,
}
FLOW = {
    **U1,
    "flow": {"name": "u1_stout", "n_layers": 2, "hidden": [4]},
    "training": {"n_steps": 2, "batch_size": 4, "lr": 0.01},
    "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 2}},
}


def _set(spec: dict, path: str, value) -> dict:
    spec = copy.deepcopy(spec)
    keys = path.split(".")
    table = spec
    for key in keys[:-1]:
        table = table[key]
    table[keys[-1]] = value
    return spec


def _spec_error(spec: dict) -> str:
    with pytest.raises(SpecError) as info:
        Simulation.from_spec(spec)
    return str(info.value)


# -- the values of the issue, through Simulation.from_spec -----------------------------------------

INF, NAN = float("inf"), float("nan")

ISSUE_CASES = [
    # (spec, dotted path, value, path in the message, allowed range in the message)
    (U1, "action.beta", INF, "spec['action']['beta']", "<= 10000"),
    (U1, "action.beta", 1e308, "spec['action']['beta']", "<= 10000"),
    (U1, "action.beta", -INF, "spec['action']['beta']", "> 0"),
    (U1, "action.beta", NAN, "spec['action']['beta']", "> 0"),
    (U1, "sampler.integrator.step_size", INF, "spec['sampler']['integrator']['step_size']", "finite number > 0"),
    (FLOW, "training.lr", INF, "spec['training']['lr']", "<= 1"),
    (FLOW, "training.lr", 1e300, "spec['training']['lr']", "<= 1"),
    (FLOW, "seed", 2**70, "spec['seed']", "< 4611686018427387904"),
    (U1, "seed", 2**62, "spec['seed']", "< 4611686018427387904"),
    (U1, "n_chains", 1e23, "spec['n_chains']", "an integer >= 1"),
    (U1, "n_chains", 10**23, "spec['n_chains']", "2**63 - 1"),
    (U1, "n_trajectories", 10**30, "spec['n_trajectories']", "2**63 - 1"),
    (U1, "n_thermalization", -1, "spec['n_thermalization']", ">= 0"),
    (U1, "n_thermalization", True, "spec['n_thermalization']", "an integer"),
    (U1, "action.beta", "3", "spec['action']['beta']", "a number"),
    (U1, "lattice.shape", [], "spec['lattice']['shape']", "a list of positive integers (at least one"),
    (U1, "lattice.shape", [0, 4], "spec['lattice']['shape']", "positive integers"),
    (U1, "lattice.shape", [10**30, 4], "spec['lattice']['shape']", "2**63 - 1"),
    (U1, "lattice.shape", [4], "spec['lattice']['shape']", "2D theory"),
    (U1, "lattice.shape", [4, 4, 4, 4, 4], "spec['lattice']['shape']", "2D theory"),
    (FLOW, "training.max_seconds", INF, "spec['training']['max_seconds']", "finite"),
    (FLOW, "training.grad_clip", INF, "spec['training']['grad_clip']", "finite"),
    (FLOW, "flow.max_coefficient", NAN, "spec['flow']['max_coefficient']", "< 1"),
    (FLOW, "flow.n_layers", 10**30, "spec['flow']['n_layers']", "2**63 - 1"),
    (FLOW, "flow.hidden", [10**30], "spec['flow']['hidden']", "positive integers"),
]


@pytest.mark.parametrize(
    "spec, path, value, where, allowed", ISSUE_CASES, ids=[f"{c[1]}={c[2]!r}"[:60] for c in ISSUE_CASES]
)
def test_bad_values_are_spec_errors_naming_path_and_range(spec, path, value, where, allowed):
    message = _spec_error(_set(spec, path, value))
    assert message.startswith(where), message
    assert allowed in message, message


def test_every_numeric_parameter_of_every_component_rejects_non_finite_and_ill_typed_values():
    """One rule for all: each number or integer that a registered component (or the run, or training)
    declares refuses NaN, +-inf, a string and a bool, with a ParameterError naming it."""
    classes = [RunSettings, TrainingSettings]
    for registry in REGISTRIES.values():
        classes += [_parameter_class(entry.cls) for entry in registry.entries().values()]
    checked = []
    for cls in classes:
        for field in attrs.fields(cls):
            if field.metadata.get("type") not in ("number", "integer"):
                continue
            for value in (NAN, INF, -INF, "3", True):
                converted = field.converter(value) if field.converter is not None else value
                with pytest.raises(ParameterError) as info:
                    field.validator(None, field, converted)
                assert info.value.param == field.name
            checked.append(f"{cls.__name__}.{field.name}")
    # the parameters the issue names, and at least one of every plugin
    for name in ("U1Wilson.beta", "XY.beta", "Phi4.kappa", "Phi4.lam0", "Leapfrog.step_size", "TrainingSettings.lr",
                 "RunSettings.seed", "RunSettings.n_chains", "Config.von_mises_beta", "Omelyan.lam"):
        assert name in checked, (name, checked)


def test_integers_beyond_64_bits_are_refused_everywhere():
    classes = [RunSettings, TrainingSettings]
    for registry in REGISTRIES.values():
        classes += [_parameter_class(entry.cls) for entry in registry.entries().values()]
    for cls in classes:
        for field in attrs.fields(cls):
            if field.metadata.get("type") == "integer":
                # refused with its bound: 2**63 - 1 by default, or the field's own (``le=8`` for layers per step)
                with pytest.raises(ParameterError, match=r"(2\*\*63 - 1|< \d+|<= \d+).*got 9223372036854775808"):
                    field.validator(None, field, INT64_MAX + 1)


def test_the_largest_seed_works_with_every_offset():
    """seed < 2**62: the seeds of training (+2**40), of a flow's initial weights (+2**41) and of the measurements
    (+2**42) fit torch."""
    sim = Simulation.from_spec({**FLOW, "seed": 2**62 - 1})
    assert sim.generator().initial_seed() == 2**62 - 1
    assert sim._training_generator().initial_seed() == 2**62 - 1 + TRAINING_SEED_OFFSET
    assert sim.measurement_generator().initial_seed() == 2**62 - 1 + MEASUREMENT_SEED_OFFSET
    assert (2**62 - 1 + FLOW_INIT_SEED_OFFSET) < 2**63


def test_u1_beta_limit_is_where_the_exact_values_stay_cheap():
    sim = Simulation.from_spec(_set(U1, "action.beta", 1e4))
    assert sim.action.beta == 1e4  # the bound itself is accepted
    message = _spec_error(_set(U1, "action.beta", 1.0001e4))
    assert "spec['action']['beta']" in message and "<= 10000" in message


def test_overflowing_couplings_are_refused_by_the_finite_action_check():
    """Finite couplings whose action overflows the dtype on a field from the prior (any theory)."""
    phi4 = {**U1, "action": {"name": "phi4", "kappa": 0.2, "lam": 1e308}, "observables": ["phi_squared"]}
    message = _spec_error(phi4)
    assert message.startswith("spec['action']: the action") and "float64" in message and "lam = 1e+308" in message
    xy = {**U1, "lattice": {"shape": [8, 8]}, "action": {"name": "xy", "beta": 3e38}, "observables": ["xy_energy"], "dtype": "float32"}
    message = _spec_error(xy)
    assert message.startswith("spec['action']") and "float32" in message
    Simulation.from_spec({**xy, "dtype": "float64"})  # the same beta is finite in float64


def test_phi4_couplings_must_be_finite():
    for key, value in (("kappa", INF), ("kappa", -INF), ("lam", INF), ("kappa", NAN)):
        spec = {**U1, "action": {"name": "phi4", "kappa": 0.2, "lam": 0.02, key: value}, "observables": ["phi_squared"]}
        assert _spec_error(spec).startswith(f"spec['action']['{key}']: expected a finite number")


def test_a_poisson_flow_whose_initial_spline_underflows_is_refused():
    spec = {**U1, "flow": {"name": "u1_plaquette_poisson", "von_mises_beta": 20.0}, "sampler": "flow_imh"}
    message = _spec_error(spec)
    assert message.startswith("spec['flow']['von_mises_beta']") and "n_bins = 128" in message
    Simulation.from_spec(_set(spec, "flow.von_mises_beta", 6.0))  # the docs' beta = 6 flow still builds


# -- memory ----------------------------------------------------------------------------------------


def test_a_flow_whose_weights_cannot_be_allocated_is_a_spec_error():
    coupling = {**FLOW, "flow": {"name": "u1_plaquette_coupling", "n_layers": 2, "hidden": [4], "kernel_size": 10**9 + 1}}
    message = _spec_error(coupling)
    assert message.startswith("spec['flow']: the flow's weights cannot be allocated") and "kernel_size" in message
    poisson = {**U1, "flow": {"name": "u1_plaquette_poisson", "n_bins": 2**63 - 1}, "sampler": "flow_imh"}
    assert _spec_error(poisson).startswith("spec['flow']['n_bins']: expected an integer >= 2 and <= 1048576")


def test_a_run_that_cannot_fit_is_refused_with_the_estimate_before_the_flow_is_built(monkeypatch):
    built = []
    from lattice_flows_u1.flows import stout

    original = stout.StoutFlow.__init__
    monkeypatch.setattr(stout.StoutFlow, "__init__", lambda self, *a: (built.append(1), original(self, *a))[1])
    message = _spec_error(_set(FLOW, "lattice.shape", [100000, 100000]))
    assert message.startswith("spec['lattice']['shape'], spec['n_chains'] or spec['training']['batch_size']"), message
    assert "flow 4.66 TiB" in message
    assert "TiB" in message and "available (MemAvailable in /proc/meminfo)" in message
    assert built == []  # refused before the flow (whose masks are lattice-sized) was built
    message = _spec_error(_set(U1, "n_chains", 10**15))
    assert message.startswith("spec['lattice']['shape'] and spec['n_chains']") and "fields" in message


def test_the_estimate_names_the_trajectories_when_the_records_dominate(monkeypatch):
    monkeypatch.setattr(resources, "available", lambda device: (10**6, "a test's budget"))
    message = _spec_error(_set(U1, "n_trajectories", 10**6))
    assert message.startswith("spec['n_trajectories'] and spec['n_chains']"), message
    assert "229 MiB (fields 2 KiB, records 229 MiB" in message and "977 KiB is available (a test's budget)" in message
    Simulation.from_spec(_set(U1, "n_trajectories", 100))  # 100 rows fit in 1 MB


def test_the_estimate_counts_fields_records_and_flow():
    parts = resources.estimate((2, 4, 4), n_chains=3, n_trajectories=10, n_columns=2, itemsize=8)
    assert parts == {"fields": resources.FIELD_COPIES * 3 * 32 * 8, "records": resources.RECORD_COPIES * 3 * 10 * 6 * 8}
    with_flow = resources.estimate(
        (2, 4, 4), n_chains=3, n_trajectories=10, n_columns=2, itemsize=4, flow={"n_layers": 5, "hidden": [4, 6]}, batch_size=64
    )
    assert with_flow["flow"] == resources.FLOW_KEPT * 64 * 32 * 5 * 10 * 4
    assert with_flow.total == sum(with_flow.values())


def test_available_reads_meminfo_on_the_cpu():
    free, source = resources.available(torch.device("cpu"))
    assert free is None or free > 0
    assert source in ("MemAvailable in /proc/meminfo", "available physical pages (sysconf)", "unknown")


# -- the command line: argument errors, no run folder ------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--checkpoint-every", "0"], "argument --checkpoint-every: expected a number of updates, an integer >= 1, got 0"),
        (["--checkpoint-every", "-5"], "argument --checkpoint-every: expected a number of updates, an integer >= 1, got -5"),
        (["--checkpoint-every", "1e3"], "argument --checkpoint-every: expected a number of updates, an integer >= 1, got '1e3'"),
        (["--threads", "-1"], "argument --threads: expected 0 (torch's default) or a number of threads"),
        (["--threads", "100000"], "argument --threads: expected 0 (torch's default) or a number of threads"),
    ],
)
def test_bad_flags_are_argument_errors_before_anything_is_written(workdir, capsys, args, expected):
    with pytest.raises(SystemExit) as info:
        main(["run", "--quiet", "--out", "x", *args])
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (workdir / "x").exists()


@pytest.mark.parametrize(
    "setting, where",
    [
        ("action.beta=1e308", "spec['action']['beta']: expected a number > 0.0 and <= 10000.0, got 1e+308"),
        ("action.beta=Infinity", "spec['action']['beta']: expected a finite number > 0.0 and <= 10000.0, got inf"),
        ("sampler.integrator.step_size=Infinity", "spec['sampler']['integrator']['step_size']: expected a finite number"),
        ("seed=1180591620717411303424", "spec['seed']: expected an integer >= 0 and < 4611686018427387904"),
        ("n_chains=1e23", "spec['n_chains']: expected an integer >= 1, got 1e+23 (float)"),
        ("lattice.shape=[100000,100000]", "spec['lattice']['shape'] and spec['n_chains']: the run needs at least"),
        ("lattice.shape=[]", "spec['lattice']['shape']: expected a list of positive integers (at least one"),
        ("n_trajectories=true", "spec['n_trajectories']: expected an integer >= 1, got True (bool)"),
    ],
)
def test_bad_set_values_are_one_line_errors_and_write_nothing(workdir, capsys, setting, where):
    small = ["--set", "n_chains=2", "--set", "n_thermalization=1", "--set", "n_trajectories=3", "--set", "lattice.shape=[4,4]"]
    assert main(["run", "--quiet", "--out", "x", *small, "--set", setting]) == 2  # the bad value last: it wins
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert where in err[0], err[0]
    assert not (workdir / "x").exists()


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes"),
        RuntimeError("Storage size calculation overflowed with sizes=[4294967296, 4294967296, 2]"),
    ],
    ids=["torch.OutOfMemoryError", "MemoryError", "cpu-allocator", "size-overflow"],
)
def test_out_of_memory_during_a_run_is_a_one_line_error(workdir, capsys, monkeypatch, error):
    """An allocation failure while sampling (here from Simulation.run, monkeypatched) ends with one line; the CLI
    and the building of a flow share one test of it (:func:`lattice_flows.resources.is_allocation_failure`), so a
    size beyond 64 bits counts here too."""
    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Simulation, "run", fail)
    assert main(["run", "--quiet", "--out", "x", "--set", "n_trajectories=5", "--set", "n_thermalization=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lattice-flows: error: out of memory ("), err
    assert "reduce lattice.shape, n_chains, n_trajectories" in err[0]


def test_other_runtime_errors_still_raise(workdir, monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("a bug, not a lack of memory")

    monkeypatch.setattr(Simulation, "run", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", "--quiet", "--out", "x", "--set", "n_trajectories=5"])


def test_the_exact_cost_benchmark_runs(capsys):
    module = load_benchmark("u1_exact_cost")
    module.main(["--betas", "1", "2", "--shape", "4", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["beta", "median", "s", "ratio"] and len(lines) == 3


@pytest.mark.parametrize("every", [0, -5, 2.5, True, "100"])
def test_run_refuses_a_bad_checkpoint_interval_before_the_first_update(tmp_path, every):
    """The Python API checks what the CLI's --checkpoint-every checks (0 divided by zero before)."""
    sim = Simulation.from_spec(
        {"lattice": {"shape": [4, 4]}, "action": {"name": "u1_wilson", "beta": 1.0},
         "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 2}},
         "n_chains": 2, "n_thermalization": 1, "n_trajectories": 2}
    )
    with pytest.raises(ValueError, match=r"checkpoint_every.*expected an integer >= 1"):
        sim.run(checkpoint=tmp_path / "chains.pt", checkpoint_every=every)
    assert not (tmp_path / "chains.pt").exists()

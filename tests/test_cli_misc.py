"""Command-line items of issue 13, item 6: ``exact`` for every theory with exact values, help without
arguments, a description for every subcommand; and tables that carry their spec (``table.attrs``,
:func:`lattice_flows.concat_runs`)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from lattice_flows import Simulation, concat_runs
from lattice_flows.cli import build_parser, main
from lattice_flows.errors import LatticeFlowsError
from lattice_flows.rundir import RunFolder


def _values(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in (line.split(" = ") for line in out.splitlines() if line.startswith("<"))}


def _error_line(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err and "Traceback" not in captured.err
    return err[-1], captured.out


# -- exact ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, kappa", [((8, 8), 0.2), ((16,), 0.2), ((4, 4, 4), 0.1)])
def test_exact_prints_the_free_phi4_values(shape, kappa, capsys):
    """Free field (``lam = 0``), hopping form: the zero mode ``M`` is Gaussian with ``<M^2> = 1 / (2 V (1 - 2 D kappa))``,
    so ``chi = V <M^2> = 1 / (2 (1 - 2 D kappa))`` and ``<|M|> = sqrt(2 <M^2> / pi)``."""
    args = ["exact", "--action", "phi4", "--set", f"kappa={kappa}", "--set", "lam=0", "--shape", *map(str, shape)]
    assert main(args) == 0
    values = _values(capsys.readouterr().out)
    V, D = math.prod(shape), len(shape)
    m2 = 1 / (2 * V * (1 - 2 * D * kappa))
    assert values["<susceptibility>"] == pytest.approx(V * m2, rel=1e-10)
    assert values["<abs_magnetization>"] == pytest.approx(math.sqrt(2 * m2 / math.pi), rel=1e-10)
    assert values["<magnetization>"] == 0.0
    assert "<phi_squared>" in values


def test_exact_phi4_takes_the_spec_path_form_too(capsys):
    assert main(["exact", "--action", "phi4", "--set", "action.kappa=0.2", "--set", "action.lam=0", "--shape", "8", "8"]) == 0
    first = capsys.readouterr().out
    assert main(["exact", "--action", "phi4", "--set", "kappa=0.2", "--set", "lam=0", "--shape", "8", "8"]) == 0
    assert capsys.readouterr().out == first


def test_exact_beta_equals_set_beta_for_u1(capsys):
    assert main(["exact", "--beta", "2", "--shape", "4", "4"]) == 0
    with_beta = capsys.readouterr().out
    assert main(["exact", "--set", "beta=2", "--shape", "4", "4"]) == 0
    assert capsys.readouterr().out == with_beta
    from lattice_flows_u1 import exact

    assert _values(with_beta)["<plaquette>"] == pytest.approx(exact.plaquette(2.0, (4, 4)), rel=1e-12)


def test_exact_xy(capsys):
    xy_exact = pytest.importorskip("lattice_flows_xy.exact")
    assert main(["exact", "--action", "xy", "--beta", "0.5", "--shape", "4", "4"]) == 0
    values = _values(capsys.readouterr().out)
    assert values["<xy_energy>"] == pytest.approx(xy_exact.reference(0.5, (4, 4)).energy, rel=1e-12)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--action", "phi4", "--beta", "2", "--shape", "4", "4"], "the action 'phi4' has no parameter beta (its parameters: kappa, lam, m2, lam0)"),
        (["--shape", "4", "4"], "missing parameter 'beta'"),
        (["--action", "nope", "--shape", "4"], "unknown action 'nope'; available actions:"),
        (["--beta", "2", "--shape", "4", "4", "--set", "foo=1"], "unknown parameter 'foo'"),
        (["--action", "phi4", "--set", "kappa", "--shape", "4"], "expected PARAM=VALUE"),
        (["--action", "phi4", "--set", "name=u1_wilson", "--shape", "4"], "choose the action with --action"),
        (["--beta", "2", "--shape", "4", "4", "4"], "exact --shape: u1_wilson is a 2D theory"),
        (["--beta", "2", "--shape", "0", "4"], "expected positive lattice sizes"),
        (["--beta", "1e308", "--shape", "4", "4"], "beta"),
    ],
)
def test_exact_bad_input_is_one_line_exit_2_and_prints_nothing_else(args, message, capsys):
    assert main(["exact", *args]) == 2
    line, out = _error_line(capsys)
    assert line.startswith("lattice-flows: error:") and message in line, line
    assert out == ""  # no header line before the error


# -- help ----------------------------------------------------------------------------------------


def test_no_arguments_print_the_help_and_exit_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lattice-flows") and "exact" in out and "report" in out


@pytest.mark.parametrize("command", [[sys.executable, "-m", "lattice_flows"]])
def test_python_m_lattice_flows_alone_prints_the_help(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lattice-flows") and "positional arguments" in result.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_has_a_description_and_help():
    subparsers = _subparsers(build_parser())
    assert {"run", "train", "sample", "plugins", "exact", "report"} <= set(subparsers)
    for name, sub in subparsers.items():
        assert sub.description and len(sub.description) > 40, name
        text = sub.format_help()
        assert sub.description.split()[0] in text, name


# -- tables carry their spec -----------------------------------------------------------------------

def _small_spec(beta: float = 1.5, shape=(4, 4)) -> dict:
    return {
        "lattice": {"shape": list(shape)},
        "action": {"name": "u1_wilson", "beta": beta},
        "sampler": {"name": "hmc", "target_acceptance": 0.8, "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
        "observables": ["plaquette"],
        "n_chains": 2,
        "n_thermalization": 4,
        "n_trajectories": 5,
        "seed": 3,
    }


def test_run_table_attrs_hold_the_whole_resolved_spec():
    sim = Simulation.from_spec(_small_spec())
    table = sim.run()
    assert table.attrs["spec"] == sim.to_spec()
    assert Simulation.from_spec(table.attrs["spec"]) == sim
    assert table.attrs["sampler"]["name"] == "hmc"  # the tuned sampler, as before


def test_a_run_folder_table_keeps_its_spec_from_parquet_and_from_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(_small_spec()))
    assert main(["run", str(spec_file), "--out", "out", "--csv", "--quiet"]) == 0
    folder = RunFolder(tmp_path / "out")
    expected = folder.read_spec()
    from_parquet = folder.read_table()
    assert from_parquet.attrs["spec"] == expected and from_parquet.attrs["sampler"]["name"] == "hmc"
    folder.parquet.unlink()
    from_csv = folder.read_table()
    assert from_csv.attrs["spec"] == expected
    assert from_csv.attrs["sampler"] == from_parquet.attrs["sampler"]


def test_concat_runs_adds_a_column_per_parameter():
    a = Simulation.from_spec(_small_spec(1.5, (4, 4))).run()
    b = Simulation.from_spec(_small_spec(2.5, (4, 6))).run()
    both = concat_runs([a, b], parameters=["action.beta", "lattice.shape", "sampler.name"])
    assert list(both.columns[:3]) == ["action.beta", "lattice.shape", "sampler.name"]
    assert len(both) == len(a) + len(b)
    assert both["action.beta"].tolist() == [1.5] * len(a) + [2.5] * len(b)
    assert set(both["lattice.shape"]) == {(4, 4), (4, 6)} and set(both["sampler.name"]) == {"hmc"}
    means = both.groupby("action.beta")["plaquette"].mean()
    assert means[1.5] == pytest.approx(a["plaquette"].mean()) and means[2.5] == pytest.approx(b["plaquette"].mean())
    pd.testing.assert_frame_equal(both.iloc[: len(a), 3:].reset_index(drop=True), a.reset_index(drop=True))
    assert both.attrs["specs"] == [a.attrs["spec"], b.attrs["spec"]]
    # by default: the parameters that differ
    assert list(concat_runs([a, b]).columns[:2]) == ["lattice.shape", "action.beta"]


def test_concat_runs_errors_are_clear():
    a = Simulation.from_spec(_small_spec()).run()
    bare = a.copy()
    bare.attrs = {}
    with pytest.raises(LatticeFlowsError, match=r"table 1 has no spec in table.attrs\['spec'\]"):
        concat_runs([a, bare], parameters=["action.beta"])
    with pytest.raises(LatticeFlowsError, match="table 0's spec has no parameter 'action.kappa': action has no key 'kappa'"):
        concat_runs([a], parameters=["action.kappa"])
    a.attrs["spec"]["plaquette"] = 1
    with pytest.raises(LatticeFlowsError, match="'plaquette' is already a column"):
        concat_runs([a], parameters=["plaquette"])
    with pytest.raises(LatticeFlowsError, match="at least one table"):
        concat_runs([])


def test_concat_runs_by_default_puts_none_where_a_spec_lacks_a_parameter():
    """An HMC run beside a run with a flow: the flow's parameters differ, and are None for the HMC rows."""
    a = Simulation.from_spec(_small_spec()).run()
    b = a.copy()
    b.attrs = {"spec": {**a.attrs["spec"], "flow": {"name": "u1_stout", "n_layers": 2}}}
    both = concat_runs([a, b])
    assert list(both.columns[:2]) == ["flow.name", "flow.n_layers"]
    assert both["flow.name"].tolist() == [None] * len(a) + ["u1_stout"] * len(b)
    with pytest.raises(LatticeFlowsError, match="table 0's spec has no parameter 'flow.name'"):
        concat_runs([a, b], parameters=["flow.name"])  # asked for by name, a missing parameter is an error

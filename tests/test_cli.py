"""The command line end to end, in temporary folders: run, interrupt, resume, report, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lattice_flows import Simulation
from lattice_flows.cli import main
from lattice_flows_u1 import exact

from run_specs import flow_spec, launch, small_hmc_toml, wait_for

FLOW_SPEC = flow_spec()




def _spec_file(folder: Path, n: int = 40) -> Path:
    path = folder / "small.toml"
    path.write_text(small_hmc_toml(n=n, tuned=True))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_run_writes_a_complete_run_folder(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--csv", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "plaquette" in out and "topological_charge^2" in out
    folder = workdir / "runs" / "small"
    for name in ("spec.json", "status.json", "chains.pt", "table.parquet", "table.csv", "summary.csv", "summary.txt"):
        assert (folder / name).is_file(), name
    figures = {p.name for p in (folder / "figures").iterdir()}
    assert {"histories.png", "histogram_topological_charge.png", "delta_H.png"} <= figures
    table = pd.read_parquet(folder / "table.parquet")
    assert len(table) == 3 * 40
    pd.testing.assert_frame_equal(table, pd.read_csv(folder / "table.csv"), check_dtype=False)
    spec_used = json.loads((folder / "spec.json").read_text())
    assert spec_used == Simulation.from_spec(spec_used).to_spec()  # resolved: every default written out
    assert json.loads((folder / "status.json").read_text())["sampling"] == "complete"
    # the same table as the Python API gives for the same spec and seed
    pd.testing.assert_frame_equal(table, Simulation.from_spec(spec_used).run(), check_dtype=False)


def test_set_overrides_and_out_folder(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet", "--out", "b2", "--set", "action.beta=2.0", "--set", "n_chains=2"]) == 0
    used = json.loads((workdir / "b2" / "spec.json").read_text())
    assert used["action"]["beta"] == 2.0 and used["n_chains"] == 2


def test_an_existing_run_folder_is_refused_unless_resumed(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet"]) == 0
    before = (workdir / "runs/small/table.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(spec), "--quiet"]) == 2
    assert "already exists; pass --resume" in _error_line(capsys)
    assert (workdir / "runs/small/table.parquet").stat().st_mtime_ns == before
    assert main(["run", str(spec), "--quiet", "--set", "seed=5", "--resume"]) == 2
    assert "another spec (differs in seed)" in _error_line(capsys)
    assert main(["run", str(spec), "--quiet", "--resume"]) == 0  # a finished run resumes to its table


def _launch(args, cwd):
    return launch([sys.executable, "-m", "lattice_flows", *args], cwd)


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_interrupted_run_resumes_to_the_uninterrupted_table(workdir, how):
    spec = _spec_file(workdir, n=3000)
    reference = _launch(["run", str(spec), "--quiet", "--out", "reference"], workdir)
    interrupted = _launch(["run", str(spec), "--quiet", "--out", "cut", "--checkpoint-every", "50"], workdir)
    wait_for(workdir / "cut" / "chains.pt", interrupted)
    if how == "ctrl-c":
        interrupted.send_signal(signal.SIGINT)
        out, err = interrupted.communicate(timeout=120)
        assert interrupted.returncode == 130, err
        assert "continue with --resume" in err and "Traceback" not in err
    else:
        interrupted.send_signal(signal.SIGKILL)
        interrupted.communicate(timeout=120)
    assert not (workdir / "cut" / "table.parquet").exists()
    resumed = _launch(["run", str(spec), "--quiet", "--out", "cut", "--resume"], workdir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    reference.communicate(timeout=300)
    assert reference.returncode == 0
    a = pd.read_parquet(workdir / "reference" / "table.parquet")
    b = pd.read_parquet(workdir / "cut" / "table.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_report_rebuilds_summary_and_figures(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet"]) == 0
    folder = workdir / "runs" / "small"
    (folder / "summary.txt").unlink()
    for p in (folder / "figures").iterdir():
        p.unlink()
    capsys.readouterr()
    assert main(["report", str(folder)]) == 0
    assert "plaquette" in capsys.readouterr().out
    assert (folder / "summary.txt").exists() and (folder / "figures" / "histories.png").exists()


def test_train_then_sample_from_the_flow_checkpoint(workdir, capsys):
    spec = workdir / "flow.json"
    spec.write_text(json.dumps(FLOW_SPEC))
    assert main(["train", str(spec), "--quiet"]) == 0
    folder = workdir / "runs" / "flow"
    history = pd.read_csv(folder / "history.csv")
    assert len(history) == 6 and (folder / "flow.pt").exists() and (folder / "figures" / "training.png").exists()
    assert not (folder / "table.parquet").exists()
    # the trained flow on a larger lattice, sampled without training
    assert main(["sample", str(folder / "flow.pt"), "--quiet", "--out", "big", "--set", "lattice.shape=[8,8]"]) == 0
    assert len(pd.read_parquet(workdir / "big" / "table.parquet")) == 2 * 12
    assert json.loads((workdir / "big" / "spec.json").read_text())["lattice"]["shape"] == [8, 8]
    # run --resume of the training folder finds the trained flow and only samples
    assert main(["run", str(spec), "--quiet", "--resume"]) == 0
    assert len(pd.read_csv(folder / "history.csv")) == 6
    assert len(pd.read_parquet(folder / "table.parquet")) == 2 * 12


@pytest.mark.parametrize("sampler", ["fthmc", "flow_imh"])
def test_flow_samplers_resume_row_for_row(sampler, tmp_path):
    from lattice_flows.simulation import RunInterrupted

    spec = {**FLOW_SPEC, "sampler": {"name": sampler, **({} if sampler == "flow_imh" else FLOW_SPEC["sampler"])}}
    whole = Simulation.from_spec(spec).run()
    calls = []
    with pytest.raises(RunInterrupted):
        Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt", checkpoint_every=4, should_stop=lambda: len(calls.append(1) or calls) == 7)
    resumed = Simulation.from_spec(spec).run(checkpoint=tmp_path / "c.pt")
    pd.testing.assert_frame_equal(whole, resumed)


def test_exact_command(capsys):
    assert main(["exact", "--beta", "6", "--shape", "8", "8"]) == 0
    out = capsys.readouterr().out
    values = dict(line.split(" = ") for line in out.splitlines() if line.startswith("<"))
    assert float(values["<plaquette>"]) == pytest.approx(exact.plaquette(6.0, (8, 8)), rel=1e-10)
    assert float(values["<topological_charge^2>"]) == pytest.approx(exact.topological_charge_squared(6.0, (8, 8)), rel=1e-10)
    p = {int(q): float(v) for q, v in (line.split() for line in out.splitlines() if line[:1] in (" ", "-") or line[:1].isdigit())}
    assert p[0] == pytest.approx(exact.topological_charge_distribution(6.0, (8, 8))[0], rel=1e-10)


def test_plugins_command_lists_components_with_packages_and_parameters(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("u1_wilson", "nested_leapfrog", "fthmc", "u1_plaquette_coupling", "topological_charge"):
        assert name in out
    assert "n_inner" in out and "lattice-flows" in out


def test_help_of_every_command_explains_the_spec_keys():
    for command in ("run", "train", "sample"):
        result = subprocess.run([sys.executable, "-m", "lattice_flows", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0
        for key in ("lattice", "action", "sampler", "n_chains", "seed"):
            assert key in result.stdout
    for command in ("plugins", "exact", "report"):
        assert subprocess.run([sys.executable, "-m", "lattice_flows", command, "--help"], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["run", "missing.toml"], "cannot read the spec file"),
        (("bad.toml", "n_chains = [1,"), ["run", "bad.toml"], "malformed TOML"),
        (("s.toml", "what = 1\n" + small_hmc_toml(n=5, tuned=True)), ["run", "s.toml"], "unknown key 'what'"),
        (None, ["run", "--set", "sampler.name=hmcc"], "hmcc"),
        (None, ["run", "--set", "action.beta=hot"], "spec['action']['beta']"),
        (None, ["run", "--set", "n_chains=1.5"], "n_chains"),
        (("file", "x"), ["run", "--out", "file/sub"], "file/sub"),
        (("garbage.pt", "not a checkpoint"), ["sample", "garbage.pt"], "not a readable lattice-flows checkpoint"),
        (None, ["report", "nowhere"], "no spec.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workdir, capsys, setup, args, message):
    if setup is not None:
        (workdir / setup[0]).write_text(setup[1])
    assert main([*args, "--quiet"] if args[0] == "run" else args) == 2
    line = _error_line(capsys)
    assert line.startswith("lattice-flows: error:") and message in line, line


def test_a_chains_checkpoint_from_another_spec_is_refused(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet", "--out", "a"]) == 0
    os.makedirs("b")
    assert main(["run", str(spec), "--quiet", "--out", "b", "--set", "seed=9"]) == 0
    # put a's chains into b's folder: b's spec differs (seed), so resuming from them is refused
    (workdir / "b" / "chains.pt").write_bytes((workdir / "a" / "chains.pt").read_bytes())
    (workdir / "b" / "table.parquet").unlink()
    capsys.readouterr()
    assert main(["run", str(spec), "--quiet", "--out", "b", "--set", "seed=9", "--resume"]) == 2
    assert "written by another spec" in _error_line(capsys)


def test_a_corrupted_chains_checkpoint_is_an_error(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet"]) == 0
    (workdir / "runs/small/chains.pt").write_bytes(b"\x00" * 100)
    capsys.readouterr()
    assert main(["run", str(spec), "--quiet", "--resume"]) == 2
    assert "not a readable lattice-flows checkpoint" in _error_line(capsys)

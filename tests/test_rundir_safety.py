"""Run folders: one process at a time (a lock), nothing created before everything is validated, folders named
after their source, runs extended by --resume, orphan temporary files removed, file modes after the umask,
a full disk as a clear error, and checkpoints whose cost grows linearly with the run."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lattice_flows import Simulation
from lattice_flows.checkpoint import write_atomic
from lattice_flows.cli import main
from lattice_flows.rundir import RunFolder, RunFolderError

from benchmark_scripts import load_benchmark
from run_specs import flow_spec, small_hmc_toml

FLOW_SPEC = flow_spec(training={"n_steps": 4, "batch_size": 8, "lr": 0.01})




def _spec_file(folder: Path, n: int = 40, beta: float = 1.5, name: str = "small.toml") -> Path:
    path = folder / name
    path.write_text(small_hmc_toml(n=n, beta=beta))
    return path


def _flow_spec_file(folder: Path, **changes) -> Path:
    path = folder / "flow.json"
    path.write_text(json.dumps({**FLOW_SPEC, **changes}))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


# -- the lock --------------------------------------------------------------------------------------


def _start_two_together(workdir, attempts: int) -> None:
    """Start two runs of different beta on one --out, ``attempts`` times: one must run, the other be refused."""
    spec2, spec3 = _spec_file(workdir, beta=2.0, name="b2.toml"), _spec_file(workdir, beta=3.0, name="b3.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(attempts):
        out = f"same{attempt}"
        processes = [
            subprocess.Popen([sys.executable, "-m", "lattice_flows", "run", str(s), "--out", out, "--quiet"],
                             cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for s in (spec2, spec3)
        ]
        results = [(p.wait(timeout=300), p.communicate()[1]) for p in processes]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        winner = [s for s, (code, _) in zip((2.0, 3.0), results) if code == 0][0]
        loser_err = [err for code, err in results if code == 2][0].strip().splitlines()[-1]
        assert "in use by pid" in loser_err or "already exists" in loser_err, loser_err
        assert "Traceback" not in loser_err
        assert json.loads((workdir / out / "spec.json").read_text())["action"]["beta"] == winner
        assert json.loads((workdir / out / "status.json").read_text())["sampling"] == "complete"


def test_two_processes_started_together_on_one_folder_cannot_both_run(workdir):
    _start_two_together(workdir, attempts=1)


def test_two_processes_racing_for_twenty_folders_never_both_get_one(workdir):
    """Two processes open the same 20 folders, each at an agreed instant: exactly one gets each folder."""
    import time

    worker = Path(__file__).resolve().parent / "workers" / "open_together.py"
    start, n = time.time() + 8.0, 20  # both processes have imported lattice_flows by then
    processes = [
        subprocess.Popen([sys.executable, str(worker), str(workdir / "race"), str(n), str(start), "0.25", beta],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for beta in ("2.0", "3.0")
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    lines = [dict(line.split(" ", 1) for line in out.splitlines()[:-1]) for out, _ in outputs]
    assert all(len(per_process) == n for per_process in lines), outputs
    opened = [sum(per_process[str(i)] == "opened" for per_process in lines) for i in range(n)]
    assert opened == [1] * n, outputs
    for i in range(n):
        refused = [per_process[str(i)] for per_process in lines if per_process[str(i)] != "opened"][0]
        assert "in use by" in refused or "already exists" in refused, refused


@pytest.mark.slow
def test_two_processes_started_together_repeatedly(workdir):
    _start_two_together(workdir, attempts=6)


def test_a_held_folder_is_refused_naming_the_holder(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet"]) == 0
    saved = json.loads((workdir / "runs/small/spec.json").read_text())
    holder = RunFolder.open("runs/small", saved, resume=True)  # this process holds it, through another descriptor
    try:
        capsys.readouterr()
        assert main(["run", str(spec), "--quiet", "--resume"]) == 2
        line = _error_line(capsys)
        assert f"in use by pid {os.getpid()} on host" in line and "since" in line and "pytest" in line, line
        from lattice_flows.rundir import RunFolderLocked

        with pytest.raises(RunFolderLocked):
            RunFolder.open("runs/small", saved, resume=True)
        capsys.readouterr()
        assert main(["report", "runs/small"]) == 2  # report rewrites the summary and figures: it waits its turn
        assert f"in use by pid {os.getpid()}" in _error_line(capsys)
    finally:
        holder.release()
    assert main(["run", str(spec), "--quiet", "--resume"]) == 0  # released: the folder is free again
    assert main(["report", "runs/small"]) == 0


# -- validate before creating ------------------------------------------------------------------------


def test_train_without_a_flow_creates_nothing_and_works_once_fixed(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["train", str(spec), "--quiet"]) == 2
    assert "no 'flow' section" in _error_line(capsys)
    assert not (workdir / "runs").exists()
    assert main(["run", str(spec), "--quiet"]) == 0  # the same name, now a valid job


def test_a_job_that_fails_before_writing_leaves_no_folder(workdir, capsys, monkeypatch):
    from lattice_flows import cli

    spec = _spec_file(workdir)

    def failing(*args, **kwargs):
        raise ValueError("sampling: a check that fails after the folder was made")

    monkeypatch.setattr(cli, "sample_job", failing)
    assert main(["run", str(spec), "--quiet"]) == 2
    assert "a check that fails" in _error_line(capsys)
    assert not (workdir / "runs" / "small").exists()
    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    assert main(["run", str(spec), "--quiet"]) == 0  # not refused as "already exists"


def test_a_users_empty_folder_is_kept_after_an_early_failure(workdir, capsys, monkeypatch):
    from lattice_flows import cli

    (workdir / "mine").mkdir()
    monkeypatch.setattr(cli, "sample_job", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    assert main(["run", str(_spec_file(workdir)), "--quiet", "--out", "mine"]) == 2
    assert (workdir / "mine").is_dir() and not list((workdir / "mine").iterdir())


def test_a_foreign_folder_gets_no_lock_file(workdir, capsys):
    (workdir / "photos").mkdir()
    (workdir / "photos" / "a.jpg").write_text("x")
    assert main(["run", str(_spec_file(workdir)), "--quiet", "--out", "photos"]) == 2
    assert "not a lattice-flows run folder" in _error_line(capsys)
    assert sorted(p.name for p in (workdir / "photos").iterdir()) == ["a.jpg"]


# -- sample's default folder -------------------------------------------------------------------------


def test_sample_names_its_folder_after_the_checkpoint(workdir, capsys):
    for name, seed in (("a", 1), ("b", 2)):
        Simulation.from_spec({**FLOW_SPEC, "seed": seed}).save(workdir / name / "flow.pt")
        (workdir / name / "spec.json").write_text("{}")
    (workdir / "b2.pt").write_bytes((workdir / "a" / "flow.pt").read_bytes())
    (workdir / "flow.pt").write_bytes((workdir / "a" / "flow.pt").read_bytes())  # not in a run folder
    for source in ("a/flow.pt", "b/flow.pt", "b2.pt", "flow.pt"):
        assert main(["sample", source, "--quiet"]) == 0
    for folder in ("a-sample", "b-sample", "b2-sample", "flow-sample"):
        assert (workdir / "runs" / folder / "table.parquet").exists(), folder
    assert json.loads((workdir / "runs/b-sample/spec.json").read_text())["seed"] == 2


# -- extending a finished run ------------------------------------------------------------------------


def test_resume_extends_a_finished_run_bit_for_bit(workdir, capsys):
    spec = _spec_file(workdir, n=30)
    assert main(["run", str(spec), "--quiet", "--out", "ext", "--checkpoint-every", "7"]) == 0
    figure = workdir / "ext" / "figures" / "histories.png"
    before = figure.stat().st_mtime_ns if figure.exists() else None
    from lattice_flows import cli

    def interrupted(*args, **kwargs):
        assert json.loads((workdir / "ext/status.json").read_text())["sampling"] == "extending to 70 trajectories"
        raise KeyboardInterrupt

    sample_job = cli.sample_job
    cli.sample_job = interrupted
    try:  # an extension that stops before it ends says so in status.json
        assert main(["run", str(spec), "--quiet", "--out", "ext", "--resume", "--set", "n_trajectories=70"]) == 130
    finally:
        cli.sample_job = sample_job
    assert main(["run", str(spec), "--quiet", "--out", "ext", "--resume", "--set", "n_trajectories=70"]) == 0
    assert main(["run", str(_spec_file(workdir, n=70)), "--quiet", "--out", "whole"]) == 0
    a, b = pd.read_parquet(workdir / "ext" / "table.parquet"), pd.read_parquet(workdir / "whole" / "table.parquet")
    assert len(a) == 3 * 70
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(workdir / "ext/summary.csv"), pd.read_csv(workdir / "whole/summary.csv"))
    assert json.loads((workdir / "ext/spec.json").read_text())["n_trajectories"] == 70
    if before is not None:
        assert figure.stat().st_mtime_ns != before
    capsys.readouterr()
    assert main(["run", str(spec), "--quiet", "--out", "ext", "--resume", "--set", "n_trajectories=50"]) == 2
    assert "n_trajectories can only grow, from 70; got 50" in _error_line(capsys)
    assert main(["run", str(spec), "--quiet", "--out", "ext", "--resume", "--set", "n_trajectories=90", "--set", "seed=3"]) == 2
    assert "differs in seed" in _error_line(capsys)
    assert json.loads((workdir / "ext/spec.json").read_text())["n_trajectories"] == 70


def test_resume_extends_a_flow_run(workdir, capsys):
    spec = _flow_spec_file(workdir)
    assert main(["run", str(spec), "--quiet", "--out", "f"]) == 0
    assert main(["run", str(spec), "--quiet", "--out", "f", "--resume", "--set", "n_trajectories=20"]) == 0
    assert main(["run", str(_flow_spec_file(workdir, n_trajectories=20)), "--quiet", "--out", "g"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / "f/table.parquet"), pd.read_parquet(workdir / "g/table.parquet"))


def test_the_python_api_extends_a_checkpointed_run(tmp_path):
    spec = {**FLOW_SPEC, "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}}}
    spec = {k: v for k, v in spec.items() if k not in ("flow", "training")}
    short = Simulation.from_spec(spec)
    short.run(checkpoint=tmp_path / "c.pt", checkpoint_every=5, progress=False)
    longer = short.evolve(n_trajectories=40)
    pd.testing.assert_frame_equal(longer.run(checkpoint=tmp_path / "c.pt", progress=False), longer.run(progress=False))
    with pytest.raises(ValueError, match="can only grow"):
        short.run(checkpoint=tmp_path / "c.pt", progress=False)


# -- orphan temporary files ----------------------------------------------------------------------------


def test_orphan_temporary_files_are_removed_only_under_the_lock(workdir, capsys):
    spec = _spec_file(workdir)
    assert main(["run", str(spec), "--quiet"]) == 0
    folder = workdir / "runs" / "small"
    orphans = [folder / ".chains.pt.x1y2.tmp", folder / "figures" / ".histories.png.ab.tmp",
               folder / "chains.records" / ".segment-000003.pt.q.tmp"]
    for orphan in orphans:
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"\0" * 1000)
    keep = folder / "notes.tmp"  # not a name write_atomic makes
    keep.write_text("mine")
    saved = json.loads((folder / "spec.json").read_text())
    with pytest.raises(RunFolderError, match="only removed while holding"):
        RunFolder(folder).remove_orphans()
    holder = RunFolder.open(folder, saved, resume=True)
    assert all(not o.exists() for o in orphans) and keep.exists()
    for orphan in orphans:
        orphan.write_bytes(b"\0")
    try:
        assert main(["run", str(spec), "--quiet", "--resume"]) == 2  # refused: another holder
        assert all(o.exists() for o in orphans)
    finally:
        holder.release()
    assert main(["run", str(spec), "--quiet", "--resume"]) == 0
    assert all(not o.exists() for o in orphans)


def test_a_folder_left_with_a_half_written_spec_is_a_new_run(workdir, capsys):
    (workdir / "cut").mkdir()
    (workdir / "cut" / ".spec.json.k3j4.tmp").write_text('{"lattice": ')  # SIGKILL while the first file was written
    assert main(["run", str(_spec_file(workdir)), "--quiet", "--out", "cut"]) == 0
    assert not list((workdir / "cut").glob("*.tmp"))


# -- file modes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "atomic.txt", lambda tmp: tmp.write_text("x"))
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = (tmp_path / "atomic.txt").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_run_folders_files_follow_the_umask(workdir, capsys):
    previous = os.umask(0o022)
    try:
        assert main(["run", str(_spec_file(workdir)), "--quiet"]) == 0
    finally:
        os.umask(previous)
    files = [p for p in (workdir / "runs/small").rglob("*") if p.is_file()]
    assert len(files) > 5
    assert {p.relative_to(workdir): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o644} == {}


# -- a full disk ------------------------------------------------------------------------------------------


def _fail_writes_of(monkeypatch, name: str) -> None:
    """Every write of a file whose name starts with ``name`` fails as on a full disk (ENOSPC)."""
    fsync = os.fsync

    def full_fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("." + name):  # write_atomic's tmp file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_fsync)
    from matplotlib.figure import Figure

    savefig = Figure.savefig

    def full_savefig(self, fname, *args, **kwargs):
        if os.path.basename(str(fname)).lstrip(".").startswith(name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", full_savefig)


@pytest.mark.parametrize(
    "name, job",
    [
        ("spec.json", "hmc"), ("chains.pt", "hmc"), ("segment-", "hmc"), ("table.parquet", "hmc"), ("status.json", "hmc"),
        ("summary.csv", "hmc"), ("summary.txt", "hmc"), ("histories.png", "hmc"), ("flow.pt", "flow"),
        ("history.csv", "flow"), ("training.png", "flow"),
    ],
)
def test_a_full_disk_is_a_clear_error_and_a_non_zero_exit(workdir, capsys, monkeypatch, name, job):
    if name.endswith(".parquet") and importlib.util.find_spec("pyarrow") is None:
        pytest.skip("no pyarrow")
    spec = _spec_file(workdir) if job == "hmc" else _flow_spec_file(workdir)
    _fail_writes_of(monkeypatch, name)
    assert main(["run", str(spec), "--quiet", "--out", "full", "--checkpoint-every", "10"]) == 2
    line = _error_line(capsys)
    assert line.startswith("lattice-flows: error:") and name in line and "No space left on device" in line, line
    assert not list(workdir.rglob("*.tmp"))


def test_write_atomic_names_the_file_when_torch_or_pyarrow_fail_on_a_full_disk(tmp_path, monkeypatch):
    from lattice_flows.checkpoint import WriteError

    monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_bavail": 0})())

    def torch_like(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    with pytest.raises(WriteError, match=r"cannot write .*x\.pt: No space left on device"):
        write_atomic(tmp_path / "x.pt", torch_like)
    assert not list(tmp_path.iterdir())


# -- linear checkpoint cost --------------------------------------------------------------------------------


def test_each_checkpoint_writes_only_the_new_measurements(tmp_path):
    spec = {k: v for k, v in FLOW_SPEC.items() if k not in ("flow", "training")}
    spec = {**spec, "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
            "n_thermalization": 0, "n_trajectories": 200}
    sizes, checkpoint = [], tmp_path / "chains.pt"

    def record() -> bool:
        if checkpoint.exists():
            sizes.append(checkpoint.stat().st_size)
        return False

    Simulation.from_spec(spec).run(checkpoint=checkpoint, checkpoint_every=20, progress=False, should_stop=record)
    segments = sorted((tmp_path / "chains.records").glob("segment-*.pt"))
    assert [s.name for s in segments][:2] == ["segment-000000.pt", "segment-000001.pt"]
    assert len(segments) == 10 and len({s.stat().st_size for s in segments}) == 1  # every segment holds 20 rows
    assert len(set(sizes)) == 1  # the state file keeps its size: it does not hold the measurements


def test_a_segment_written_but_not_listed_is_ignored_on_resume(tmp_path):
    spec = {k: v for k, v in FLOW_SPEC.items() if k not in ("flow", "training")}
    spec = {**spec, "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
            "n_trajectories": 30}
    checkpoint = tmp_path / "chains.pt"
    calls = iter(range(10**6))
    sim = Simulation.from_spec(spec)
    with pytest.raises(Exception, match="interrupted after 13"):
        sim.run(checkpoint=checkpoint, checkpoint_every=5, progress=False, should_stop=lambda: next(calls) == 12)
    # a SIGKILL between a segment's write and the state's: a segment that the state does not list
    segments = tmp_path / "chains.records"
    assert len(list(segments.iterdir())) == 3  # after updates 5 (rows 0-2), 10 (2-7), 13 (7-10)
    stale = segments / "segment-000003.pt"
    stale.write_bytes((tmp_path / "chains.records" / "segment-000000.pt").read_bytes())
    resumed = Simulation.from_spec(spec).run(checkpoint=checkpoint, checkpoint_every=5, progress=False)
    pd.testing.assert_frame_equal(resumed, Simulation.from_spec(spec).run(progress=False))
    assert len(list(segments.iterdir())) == 8  # the stale one removed; then saves after 15, 20, 25, 30 and the end (33)


def test_checkpoint_cost_benchmark_runs(monkeypatch, capsys):
    module = load_benchmark("checkpoint_cost")
    monkeypatch.setattr(sys, "argv", ["checkpoint_cost.py", "--shape", "4", "--chains", "2", "--trajectories", "30",
                                      "--every", "10", "--repeats", "1"])
    module.main()
    out = capsys.readouterr().out
    assert "3 segment files" in out and "ratio checkpointed / none:" in out


# -- several processes ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_under_torchrun_rank_0_holds_the_folder_and_an_extension_matches_one_run(workdir):
    """Two ranks: the segments gather both ranks' rows, and an extended run is the longer run's table."""
    spec = _spec_file(workdir, n=30)

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "lattice_flows", "run", *args, "--quiet", "--backend", "gloo", "--checkpoint-every", "7"]
        result = subprocess.run(cmd, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    torchrun(str(spec), "--out", "ext")
    assert len(json.loads((workdir / "ext/.lock").read_text())) == 4  # pid, host, command, started (rank 0's)
    torchrun(str(spec), "--out", "ext", "--resume", "--set", "n_trajectories=60")
    torchrun(str(_spec_file(workdir, n=60)), "--out", "whole")
    a, b = pd.read_parquet(workdir / "ext/table.parquet"), pd.read_parquet(workdir / "whole/table.parquet")
    assert len(a) == 3 * 60
    pd.testing.assert_frame_equal(a, b)

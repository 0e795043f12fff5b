"""SIGINT and SIGTERM: the first saves at the next update boundary, a second one (of either kind) ends the
process at once, leaving the last checkpoint intact, so that --resume gives the uninterrupted table."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lattice_flows import Simulation
from lattice_flows.cli import main

from run_specs import launch, small_hmc_toml, wait_for

WORKER = Path(__file__).resolve().parent / "workers" / "slow_update.py"



def _two_signals(process, first, second) -> tuple[int, str, float]:
    """Send ``first``; check that the process waits for its update to end; send ``second``; the exit status,
    standard error and seconds from the second signal to the end."""
    process.send_signal(first)
    time.sleep(1.5)
    assert process.poll() is None, "the first signal must wait for the update under way to end"
    sent = time.monotonic()
    process.send_signal(second)
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the process did not end within 20 s of a second {second.name}")
    return process.returncode, err, time.monotonic() - sent


@pytest.mark.parametrize(
    "first, second",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
    ids=["term-term", "int-term", "term-int"],
)
def test_a_second_signal_ends_a_long_update_at_once(tmp_path, first, second):
    spec = tmp_path / "long.toml"
    spec.write_text(small_hmc_toml(n_steps=10**7))  # one trajectory takes far longer than the test
    process = launch([sys.executable, "-m", "lattice_flows", "run", str(spec), "--out", "long", "--threads", "1"], tmp_path)
    wait_for(tmp_path / "long" / "spec.json", process)
    time.sleep(1.0)  # into the first update
    code, err, seconds = _two_signals(process, first, second)
    assert code == 128 + second, err
    assert f"{second.name} again: stopped at once" in err and "Traceback" not in err, err
    assert seconds < 10
    assert json.loads((tmp_path / "long" / "spec.json").read_text())["sampler"]["integrator"]["n_steps"] == 10**7


def test_the_folder_resumes_after_two_sigterms_to_the_uninterrupted_table(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "small.toml"
    spec.write_text(small_hmc_toml(n_steps=5))
    # checkpoints after updates 5, 10, 15 (segment 0: rows 0-5), 20 (segment 1); the 13th measured update (update 23) never ends
    process = launch(
        [sys.executable, str(WORKER), "run", str(spec), "--out", "cut", "--quiet", "--checkpoint-every", "5"], tmp_path,
        SLOW_AFTER="12",
    )
    wait_for(tmp_path / "cut" / "chains.records" / "segment-000001.pt", process)
    time.sleep(1.0)
    code, err, seconds = _two_signals(process, signal.SIGTERM, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and seconds < 10, err
    assert not (tmp_path / "cut" / "table.parquet").exists()
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(spec), "--out", "cut", "--quiet", "--resume"]) == 0
    uninterrupted = Simulation.from_spec(json.loads((tmp_path / "cut" / "spec.json").read_text())).run(progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cut" / "table.parquet"), uninterrupted, check_dtype=False)
    assert not list((tmp_path / "cut").rglob("*.tmp"))

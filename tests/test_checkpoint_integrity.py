"""Checkpoints carry a SHA-256 of their payload: a flipped byte, a truncated, empty or foreign file is a
plain-language CheckpointError, never a silent load and never torch's own text."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_atomic
from lattice_flows.cli import main

FLOW_SPEC = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 1.0},
    "flow": {"name": "u1_stout", "n_layers": 2, "hidden": [4]},
    "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
    "n_chains": 2,
    "n_thermalization": 2,
    "n_trajectories": 4,
}


@pytest.fixture
def flow_file(tmp_path):
    path = tmp_path / "flow.pt"
    Simulation.from_spec(FLOW_SPEC).save(path)
    return path


def _message(path) -> str:
    with pytest.raises(CheckpointError) as info:
        Simulation.load(path)
    text = str(info.value)
    assert str(path) in text and "weights_only" not in text and "\n" not in text, text
    return text


def test_a_checkpoint_loads_back_equal(flow_file):
    sim = Simulation.load(flow_file)
    fresh = Simulation.from_spec(FLOW_SPEC)
    for a, b in zip(sim.flow.state_dict().values(), fresh.flow.state_dict().values()):
        assert torch.equal(a, b)


def test_a_flipped_byte_anywhere_is_detected(flow_file):
    blob = flow_file.read_bytes()
    n = len(blob)
    positions = sorted(set(range(0, 120)) | set(range(120, n, max(1, n // 300))) | {n - 1})
    damaged = flow_file.with_name("damaged.pt")
    for position in positions:
        flipped = bytearray(blob)
        flipped[position] ^= 0x01
        damaged.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError) as info:
            Simulation.load(damaged)
        text = str(info.value)
        assert "weights_only" not in text and "\n" not in text, (position, text)
    assert len(positions) > 300


def test_a_flipped_payload_byte_names_the_checksum(flow_file):
    blob = bytearray(flow_file.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    flow_file.write_bytes(bytes(blob))
    assert "checksum does not match" in _message(flow_file)


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
def test_truncated_and_empty_files(flow_file, keep):
    blob = flow_file.read_bytes()
    flow_file.write_bytes(blob[: int(len(blob) * keep)])
    text = _message(flow_file)
    payload = len(blob) - blob.index(b"\n") - 1
    expected = "the file is empty" if keep == 0.0 else f"of {payload} payload bytes" if keep > 0.01 else "header"
    assert expected in text, text


def test_foreign_files_are_refused_in_plain_words(tmp_path):
    random = tmp_path / "random.pt"
    random.write_bytes(os.urandom(5000))
    assert "does not start with the lattice-flows checkpoint header" in _message(random)

    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.ones(3)}, plain)
    assert f"without the {FORMAT!r} marker" in _message(plain)

    class Payload:  # a pickle that would run code if unpickled unsafely
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": FORMAT, "version": 1, "x": Payload()}, unsafe)
    text = _message(unsafe)
    assert "not loaded, for safety" in text and "Unsupported global" not in text
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload()))
    assert "does not start with" in _message(raw)
    assert not (tmp_path / "pwned").exists()

    assert "is a folder" in _message(tmp_path)
    assert "no such checkpoint" in _message(tmp_path / "missing.pt")


def test_version_1_files_without_a_checksum_still_load(flow_file, tmp_path):
    data = load_checkpoint(flow_file)
    old = tmp_path / "old.pt"
    torch.save({**data, "version": 1}, old)  # the format before checksums: a bare torch.save
    sim = Simulation.load(old)
    assert sim.to_spec() == Simulation.load(flow_file).to_spec()


def test_a_header_that_lies_about_the_version_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"x": 1}, path)
    blob = path.read_bytes().replace(b"checkpoint 2 ", b"checkpoint 7 ", 1)
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="version 7"):
        load_checkpoint(path)


def test_the_cli_names_a_corrupted_flow_in_one_line(flow_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blob = bytearray(flow_file.read_bytes())
    blob[-100] ^= 0x10
    flow_file.write_bytes(bytes(blob))
    assert main(["sample", str(flow_file), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum does not match" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_a_corrupted_chains_segment_is_refused(tmp_path):
    spec = {**FLOW_SPEC, "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
            "n_thermalization": 0, "n_trajectories": 30}
    spec.pop("flow")
    checkpoint = tmp_path / "chains.pt"
    whole = Simulation.from_spec(spec).run(checkpoint=checkpoint, checkpoint_every=10, progress=False)
    segments = sorted((tmp_path / "chains.records").glob("segment-*.pt"))
    assert len(segments) == 3
    blob = bytearray(segments[1].read_bytes())
    blob[-50] ^= 0x01
    segments[1].write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        Simulation.from_spec(spec).run(checkpoint=checkpoint, progress=False)
    segments[1].unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        Simulation.from_spec(spec).run(checkpoint=checkpoint, progress=False)
    assert len(whole) == 2 * 30


def test_a_version_1_chains_checkpoint_resumes(tmp_path):
    """The chains checkpoints written before segments held every measurement inside; they still resume."""
    spec = {**FLOW_SPEC, "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
            "n_trajectories": 30}
    spec.pop("flow")
    checkpoint = tmp_path / "chains.pt"
    calls = iter(range(10**6))
    with pytest.raises(Exception, match="interrupted after 12"):
        Simulation.from_spec(spec).run(checkpoint=checkpoint, checkpoint_every=5, progress=False,
                                       should_stop=lambda: next(calls) == 11)
    state = load_checkpoint(checkpoint)
    if "records" in state:  # this version's layout: put the segments' measurements back inside, as version 1 did
        pieces = [load_checkpoint(p)["ranks"][0] for p in sorted((tmp_path / "chains.records").glob("segment-*.pt"))]
        records = {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}
        state = {**{k: v for k, v in state.items() if k != "records"}, "version": 1,
                 "ranks": [{**state["ranks"][0], "records": records}]}
        torch.save(state, checkpoint)
        for segment in (tmp_path / "chains.records").iterdir():
            segment.unlink()
    resumed = Simulation.from_spec(spec).run(checkpoint=checkpoint, progress=False)
    import pandas as pd

    pd.testing.assert_frame_equal(resumed, Simulation.from_spec(spec).run(progress=False))

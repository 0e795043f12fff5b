"""Every spec of :mod:`regression_specs` gives, on the CPU, the table (and training history and weights) it gave
when the fingerprints were recorded, bit for bit: a refactoring changes no number a user gets."""

from __future__ import annotations

import json

import pytest
import torch

from regression_specs import HASHES, SPECS, fingerprint

RECORDED = json.loads(HASHES.read_text())


def test_every_spec_has_a_fingerprint_and_the_set_covers_every_component():
    from lattice_flows import REGISTRIES

    assert set(RECORDED["hashes"]) == set(SPECS)
    text = json.dumps(list(SPECS.values()))
    for kind in ("actions", "samplers", "integrators", "flows"):
        for name in REGISTRIES[kind].names():
            assert f'"{name}"' in text, f"no regression spec uses the {kind[:-1]} {name!r}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_gives_the_recorded_results(name, device):
    if device.type != "cpu":
        pytest.skip("the fingerprints are of CPU results")
    if torch.__version__.split("+")[0] != RECORDED["torch"].split("+")[0]:
        pytest.fail(f"fingerprints were recorded with torch {RECORDED['torch']}, this is {torch.__version__}: "
                    "run the suite with the pinned torch (README), or record them anew")
    capability = torch.backends.cpu.get_cpu_capability()
    assert fingerprint(SPECS[name]) == RECORDED["hashes"][name], (
        f"{name}: not the recorded results (torch's CPU kernels here: {capability}; the fingerprints are of the AVX2 "
        "kernels that tests/conftest.py selects on x86-64)"
    )


def test_checkpoints_of_the_recorded_code_still_load_and_resume(tmp_path, device):
    """``compat/flow.pt`` and ``compat/chains.pt`` were written before the redesign of issue 14: the flow loads
    with its weights, optimizer and history, and the 3-update chains checkpoint, extended to the spec's 6
    updates, gives the recorded table of the uninterrupted run."""
    import shutil

    from lattice_flows import Simulation
    from regression_specs import COMPAT, COMPAT_SPEC, _digest, _frame_digest

    if device.type != "cpu":
        pytest.skip("the fingerprints are of CPU results")
    recorded = RECORDED["hashes"][COMPAT_SPEC]
    sim = Simulation.load(COMPAT / "flow.pt")
    assert sim.to_spec() == Simulation.from_spec(SPECS[COMPAT_SPEC]).to_spec()
    state = sim.flow.state_dict()
    weights = [v.detach().cpu().numpy().tobytes() for v in state.values()]
    assert _digest(*[k.encode() for k in state], *weights) == recorded["weights"]
    assert _frame_digest(sim.history.drop(columns=["seconds"])) == recorded["history"]
    assert sim.training_done
    shutil.copytree(COMPAT, tmp_path / "compat")
    table = sim.run(checkpoint=tmp_path / "compat" / "chains.pt", progress=False)
    assert _frame_digest(table) == recorded["table"]
    # it went on from the old files (a fresh run would have rewritten them as one segment)
    segments = tmp_path / "compat" / "chains.records"
    assert sorted(p.name for p in segments.iterdir()) == [f"segment-00000{i}.pt" for i in range(3)]
    assert (segments / "segment-000000.pt").read_bytes() == (COMPAT / "chains.records" / "segment-000000.pt").read_bytes()

"""Two CPU processes with the gloo backend, launched by torchrun: data-parallel training and sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lattice_flows import Simulation, distributed
from lattice_flows.simulation import TRAINING_SEED_OFFSET
from lattice_flows.training import train_flow

WORKERS = Path(__file__).parent / "workers"
BATCH = 8

TRAIN_SPEC = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 1.0},
    "flow": {"name": "u1_stout", "n_layers": 2, "hidden": [4]},
    "training": {"n_steps": 5, "batch_size": BATCH, "lr": 0.02},
    "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
    "observables": ["plaquette"],
    "seed": 11,
}


def torchrun(*args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_single_process_needs_no_process_group():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.chain_range(5) == range(5)
    assert [distributed.chain_range(7, r, 2) for r in (0, 1)] == [range(0, 4), range(4, 7)]
    with pytest.raises(ValueError, match="n_chains = 1"):
        distributed.chain_range(1, 0, 2)


@pytest.fixture(scope="module")
def two_rank_training(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    spec = folder / "spec.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    torchrun(str(WORKERS / "train_ranks.py"), str(spec), str(folder), cwd=folder)
    return [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]


def test_weights_are_identical_on_both_ranks_after_every_step(two_rank_training):
    a, b = two_rank_training
    assert a["weights"].shape[0] == TRAIN_SPEC["training"]["n_steps"]
    assert torch.equal(a["weights"], b["weights"])
    assert not torch.equal(a["weights"][0], a["weights"][-1])  # it did train
    assert a["loss"] == b["loss"] and a["ess"] == b["ess"]  # the global numbers, the same everywhere


def test_two_ranks_of_batch_b_train_as_one_process_with_batch_2b(two_rank_training):
    sim = Simulation.from_spec(TRAIN_SPEC)
    seed = TRAIN_SPEC["seed"] + TRAINING_SEED_OFFSET
    generators = [torch.Generator().manual_seed(distributed.rank_seed(seed, r)) for r in (0, 1)]
    history = train_flow(
        sim.flow, sim.action, sim.lattice_shape, sim.training, optimizer=sim.optimizer(), generator=generators,
        dtype=sim.dtype, device=sim.device, progress=False,
    )
    torch.testing.assert_close(torch.tensor(history["loss"].tolist()), torch.tensor(two_rank_training[0]["loss"]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.tensor(history["ess"].tolist()), torch.tensor(two_rank_training[0]["ess"]), rtol=1e-9, atol=1e-9)
    final = torch.cat([p.detach().flatten() for p in sim.flow.parameters()])
    torch.testing.assert_close(final, two_rank_training[0]["weights"][-1], rtol=1e-9, atol=1e-9)


def test_two_rank_sampling_gives_one_table_that_matches_the_exact_solution(tmp_path):
    spec = {
        "lattice": {"shape": [4, 4]},
        "action": {"name": "u1_wilson", "beta": 1.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.25, "n_steps": 4}, "target_acceptance": 0.8},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": 7,
        "n_thermalization": 50,
        "n_trajectories": 400,
        "seed": 3,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    torchrun("-m", "lattice_flows", "run", "spec.json", "--quiet", "--backend", "gloo", "--out", "two", cwd=tmp_path)
    table = pd.read_parquet(tmp_path / "two" / "table.parquet")
    assert sorted(table["chain"].unique()) == list(range(7))
    assert len(table) == 7 * 400 and not table.duplicated(["chain", "trajectory"]).any()
    single = Simulation.from_spec(spec)
    assert list(table.columns) == list(single.evolve(n_trajectories=1, n_thermalization=0).run().columns)
    summary = single.summary(table)
    for row in ("plaquette", "topological_charge^2", "exp(-delta_H)"):
        r = summary.loc[row]
        assert r["reliable"] and abs(r["pull"]) < 4.0, (row, r.to_dict())
    assert json.loads((tmp_path / "two" / "status.json").read_text())["processes"] == 2

"""Run under torchrun by tests/test_distributed.py: train a flow, record every rank's weights after each step.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/workers/train_ranks.py SPEC_JSON OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch

from lattice_flows import Simulation, distributed


def main(spec_path: str, out: str) -> None:
    assert distributed.init_from_environment("gloo")
    sim = Simulation.from_spec(json.loads(Path(spec_path).read_text()))
    weights = []

    def record() -> bool:  # asked after every training step
        weights.append(torch.cat([p.detach().flatten() for p in sim.flow.parameters()]).clone())
        return False

    history = sim.train(progress=False, should_stop=record)
    torch.save({"weights": torch.stack(weights), "loss": history["loss"].tolist(), "ess": history["ess"].tolist()},
               Path(out) / f"rank{distributed.rank()}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Small jobs that the command-line tests share: a 4x4 HMC spec file and a 4x4 stout-flow spec, and
how the tests start a job as its own process and wait for its files.

Each job takes seconds; the tests change what they are about (``n_trajectories``, ``beta``, the number
of integration steps, training) and keep the rest.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Any


def small_hmc_toml(*, n: int = 40, beta: float = 1.5, n_steps: int = 5, tuned: bool = False) -> str:
    """A TOML spec: HMC for 2D U(1) on 4x4, 3 chains, 10 thermalization updates and ``n`` measured ones;
    ``tuned`` adds ``target_acceptance = 0.8`` (the step size is then tuned while thermalizing)."""
    tuning = "target_acceptance = 0.8\n" if tuned else ""
    return f"""
n_chains = 3
n_thermalization = 10
n_trajectories = {n}
seed = 4

[lattice]
shape = [4, 4]

[action]
name = "u1_wilson"
beta = {beta}

[sampler]
name = "hmc"
{tuning}integrator = {{ name = "leapfrog", step_size = 0.2, n_steps = {n_steps} }}
"""


_FLOW_SPEC: dict[str, Any] = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 1.0},
    "flow": {"name": "u1_stout", "n_layers": 2, "hidden": [4]},
    "training": {"n_steps": 6, "batch_size": 8, "lr": 0.01},
    "sampler": {"name": "fthmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 4}},
    "observables": ["plaquette", "topological_charge"],
    "n_chains": 2,
    "n_thermalization": 3,
    "n_trajectories": 12,
}


def flow_spec(**changes: Any) -> dict[str, Any]:
    """A spec dict: a 2-layer stout flow on 4x4 trained for 6 steps, then FTHMC; top-level keys replaced by ``changes``."""
    return {**copy.deepcopy(_FLOW_SPEC), **changes}


def launch(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``command`` as a process of its own in ``cwd`` (one torch thread, ``env`` added), its output piped."""
    return subprocess.Popen(
        command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists; fail if ``process`` ends first or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)

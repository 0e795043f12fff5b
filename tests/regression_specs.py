"""A fixed set of small specs that covers every registered theory, sampler, integrator and flow, and the
fingerprint (SHA-256) of what each produces on the CPU: the measured table, its sampler section (a tuned
step shows there) and, for specs with a ``training`` section, the training history and the trained weights.

``tests/test_regression_tables.py`` checks that the code still produces these fingerprints bit for bit:
a refactoring must not change any number a user gets. The fingerprints in ``tests/data/regression_hashes.json``
were recorded with torch 2.13.0 on the CPU, one thread, with the AVX2 kernels on x86-64 (``tests/conftest.py`` and this
script select them: float32 bits differ between AVX2 and AVX-512 kernels); record them anew (only for a change that is meant to
alter results, said so in its commit message) with

    python tests/regression_specs.py --record

(``--record-new`` records only the specs that have no fingerprint yet, a new component's, and keeps the rest)

(the compatibility checkpoints in ``tests/data/compat`` are written once, by :func:`record_checkpoints`, and
never again: they stand for the files users already have).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
if platform.machine().lower() in ("x86_64", "amd64"):  # as tests/conftest.py: record with the AVX2 kernels
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

import torch  # noqa: E402  (after the kernel choice above)

HASHES = Path(__file__).parent / "data" / "regression_hashes.json"


def _run(n_chains=2, n_thermalization=4, n_trajectories=6, seed=3, **rest) -> dict[str, Any]:
    return {"n_chains": n_chains, "n_thermalization": n_thermalization, "n_trajectories": n_trajectories, "seed": seed, **rest}


U1 = {"lattice": {"shape": [4, 4]}, "action": {"name": "u1_wilson", "beta": 2.0}}
PHI4 = {"lattice": {"shape": [4, 4]}, "action": {"name": "phi4", "kappa": 0.2, "lam": 0.02}}
XY = {"lattice": {"shape": [4, 4]}, "action": {"name": "xy", "beta": 0.8}}
U1_OBSERVABLES = ["plaquette", "topological_charge", "action_density", {"name": "wilson_loop", "R": 2, "T": 1}]
PHI4_OBSERVABLES = ["magnetization", "abs_magnetization", "susceptibility", "phi_squared", {"name": "two_point", "t": 1}]
SCHWINGER = {"lattice": {"shape": [4, 4]}}
SCHWINGER_OBSERVABLES = [
    "plaquette", "topological_charge", {"name": "chiral_condensate", "method": "exact"},
    {"name": "chiral_condensate", "method": "stochastic", "n_sources": 2}, {"name": "pion_correlator", "t": 1},
]
XY_OBSERVABLES = ["xy_energy", "helicity_modulus", "vortex_density", "xy_magnetization_squared"]
TRAIN = {"n_steps": 3, "batch_size": 4, "lr": 1e-2}


def leapfrog(step_size=0.2, n_steps=4):
    return {"name": "leapfrog", "step_size": step_size, "n_steps": n_steps}


#: name -> spec. Every registered sampler, integrator, flow (both kernels of the coupling flow, every
#: ``fast_force`` of FTHMC) and theory, float32 and float64, hot and cold starts, tuning, training.
SPECS: dict[str, dict[str, Any]] = {
    "u1_hmc_leapfrog_tuned": {
        **U1, "sampler": {"name": "hmc", "target_acceptance": 0.7, "integrator": leapfrog()},
        "observables": U1_OBSERVABLES, **_run(n_thermalization=8),
    },
    "u1_hmc_omelyan_float32": {
        **U1, "sampler": {"name": "hmc", "integrator": {"name": "omelyan", "step_size": 0.3, "n_steps": 3}},
        **_run(dtype="float32"),
    },
    "u1_hmc_nested_cold": {
        **U1, "sampler": {"name": "hmc", "integrator": {"name": "nested_leapfrog", "step_size": 0.3, "n_steps": 3, "n_inner": 2}},
        **_run(start="cold"),
    },
    "u1_fthmc_ncp_trained": {
        **U1, "flow": {"name": "u1_plaquette_coupling", "n_layers": 8, "hidden": [4], "kernel": "ncp", "n_mixture": 2},
        "training": TRAIN, "sampler": {"name": "fthmc", "integrator": leapfrog()}, **_run(),
    },
    "u1_fthmc_spline_nested_action": {
        **U1, "flow": {"name": "u1_plaquette_coupling", "n_layers": 8, "hidden": [4], "kernel": "spline", "n_bins": 4},
        "sampler": {
            "name": "fthmc", "fast_force": "action",
            "integrator": {"name": "nested_leapfrog", "step_size": 0.3, "n_steps": 2, "n_inner": 2},
        },
        **_run(),
    },
    "u1_fthmc_stout_nested_flow_tuned": {
        **U1, "flow": {"name": "u1_stout", "n_layers": 2, "hidden": [4], "rectangles": True}, "training": TRAIN,
        "sampler": {
            "name": "fthmc", "fast_force": "flow", "target_acceptance": 0.8,
            "integrator": {"name": "nested_leapfrog", "step_size": 0.3, "n_steps": 2, "n_inner": 2},
        },
        **_run(n_thermalization=6),
    },
    "u1_fthmc_poisson_omelyan": {
        **U1, "flow": {"name": "u1_plaquette_poisson", "n_bins": 8},
        "sampler": {"name": "fthmc", "integrator": {"name": "omelyan", "step_size": 0.4, "n_steps": 2}}, **_run(),
    },
    "u1_imh_poisson": {**U1, "flow": {"name": "u1_plaquette_poisson", "n_bins": 8}, "sampler": "flow_imh", **_run()},
    "u1_imh_ncp_trained_float32": {
        **U1, "flow": {"name": "u1_plaquette_coupling", "n_layers": 8, "hidden": [4], "kernel": "ncp", "n_mixture": 2},
        "training": {**TRAIN, "schedule": "cosine", "grad_clip": 1.0}, "sampler": "flow_imh", **_run(dtype="float32"),
    },
    "u1_exact": {**U1, "sampler": "u1_exact", "observables": U1_OBSERVABLES, **_run(n_chains=3)},
    "u1_nonequilibrium_from_wilson": {
        **U1, "sampler": {"name": "nonequilibrium", "prior": {"name": "u1_wilson", "beta": 1.0}, "n_switch": 3,
                          "integrator": leapfrog(0.2, 3)}, **_run(),
    },
    "u1_nonequilibrium_from_defect_float32": {
        **U1, "sampler": {"name": "nonequilibrium", "n_switch": 2, "prior_updates": 2, "integrator": leapfrog(0.2, 3),
                          "prior": {"name": "u1_wilson_defect", "beta": 2.0, "defect_beta": 0.5, "defect_shape": [2, 1]}},
        **_run(dtype="float32"),
    },
    "u1_nonequilibrium_transport_float32": {
        **U1, "sampler": {"name": "u1_nonequilibrium_transport", "prior": {"name": "u1_wilson", "beta": 1.0},
                          "n_switch": 3, "transport_layers": 8, "integrator": leapfrog(0.2, 3)},
        **_run(dtype="float32"),
    },
    "u1_nonequilibrium_checkerboard": {
        **U1, "sampler": {"name": "u1_nonequilibrium_checkerboard", "prior": {"name": "u1_wilson", "beta": 1.0},
                          "n_switch": 3, "integrator": leapfrog(0.2, 3)},
        **_run(),
    },
    "phi4_hmc_leapfrog": {**PHI4, "sampler": {"name": "hmc", "integrator": leapfrog(0.3, 3)}, "observables": PHI4_OBSERVABLES, **_run()},
    "phi4_fthmc_affine_trained": {
        **PHI4, "flow": {"name": "affine_coupling", "n_layers": 4, "hidden": [4]}, "training": {**TRAIN, "force_penalty": 0.1},
        "sampler": {"name": "fthmc", "integrator": leapfrog(0.3, 3)}, **_run(),
    },
    "phi4_imh_affine_cold": {
        **PHI4, "flow": {"name": "affine_coupling", "n_layers": 4, "hidden": [4]}, "sampler": "flow_imh", **_run(start="cold"),
    },
    "xy_hmc_omelyan": {
        **XY, "sampler": {"name": "hmc", "integrator": {"name": "omelyan", "step_size": 0.3, "n_steps": 3}},
        "observables": XY_OBSERVABLES, **_run(),
    },
    "xy_3d_hmc_tuned": {
        **XY, "lattice": {"shape": [3, 3, 3]},
        "sampler": {"name": "hmc", "target_acceptance": 0.8, "trajectory_length": 1.0, "integrator": leapfrog()}, **_run(),
    },
    "xy_fthmc_mobius_trained": {
        **XY, "flow": {"name": "xy_mobius", "n_layers": 4}, "training": TRAIN,
        "sampler": {"name": "fthmc", "integrator": leapfrog(0.3, 3)}, **_run(),
    },
    "xy_imh_mobius": {**XY, "flow": {"name": "xy_mobius", "n_layers": 4}, "sampler": "flow_imh", **_run()},
    "schwinger_hmc_pseudofermion": {
        **SCHWINGER, "action": {"name": "schwinger", "beta": 2.0, "mass": 0.2}, "sampler": {"name": "hmc", "integrator": leapfrog(0.25, 3)},
        "observables": SCHWINGER_OBSERVABLES, **_run(),
    },
    "schwinger_det_fthmc_poisson": {
        **SCHWINGER, "action": {"name": "schwinger_det", "beta": 2.0, "mass": 0.2}, "flow": {"name": "u1_plaquette_poisson", "n_bins": 8},
        "sampler": {"name": "fthmc", "integrator": leapfrog(0.2, 3)}, "observables": SCHWINGER_OBSERVABLES, **_run(),
    },
}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _frame_digest(frame: pd.DataFrame) -> str:
    parts = []
    for column in frame.columns:
        values = np.ascontiguousarray(frame[column].to_numpy())
        parts += [str(column).encode(), str(values.dtype).encode(), values.tobytes()]
    return _digest(*parts)


def fingerprint(spec: dict[str, Any]) -> dict[str, str]:
    """Run ``spec`` (training it first if it has a ``training`` section) and hash what it produced."""
    from lattice_flows import Simulation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # nothing should read the global generator; if something does, it is fixed here
        sim = Simulation.from_spec(spec)
        out: dict[str, str] = {}
        if sim.training is not None:
            history = sim.train(progress=False)
            out["history"] = _frame_digest(history.drop(columns=["seconds"]))
            weights = [np.ascontiguousarray(v.detach().cpu().numpy()).tobytes() for v in sim.flow.state_dict().values()]
            out["weights"] = _digest(*[k.encode() for k in sim.flow.state_dict()], *weights)
        table = sim.run(progress=False)
        out["table"] = _frame_digest(table)
        out["sampler"] = _digest(json.dumps(table.attrs["sampler"], sort_keys=True).encode())
    return out


def record(only_new: bool = False) -> None:
    """Record every fingerprint, or (``only_new``) only those of specs that have none yet, keeping the others."""
    torch.set_num_threads(1)
    old = json.loads(HASHES.read_text())["hashes"] if only_new and HASHES.exists() else {}
    hashes = {name: old[name] if name in old else fingerprint(spec) for name, spec in SPECS.items()}
    HASHES.parent.mkdir(exist_ok=True)
    HASHES.write_text(json.dumps({"torch": torch.__version__, "hashes": hashes}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(hashes)} fingerprints to {HASHES}")




#: Checkpoints written by the code the fingerprints were recorded with: they must still load and resume.
COMPAT = HASHES.parent / "compat"
COMPAT_SPEC = "u1_fthmc_ncp_trained"


def record_checkpoints() -> None:
    """Write ``compat/flow.pt`` (the trained flow of :data:`COMPAT_SPEC`) and ``compat/chains.pt`` with its
    segments (the first 3 of its 6 measured updates)."""
    from lattice_flows import Simulation

    torch.set_num_threads(1)
    COMPAT.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        sim = Simulation.from_spec(SPECS[COMPAT_SPEC])
        sim.train(progress=False)
        sim.save(COMPAT / "flow.pt")
        short = sim.evolve(n_trajectories=3)
        short.run(checkpoint=COMPAT / "chains.pt", checkpoint_every=2, progress=False)
    print(f"wrote checkpoints to {COMPAT}")


if __name__ == "__main__":
    if sys.argv[1:] not in (["--record"], ["--record-new"]):
        sys.exit(__doc__)
    record(only_new=sys.argv[1:] == ["--record-new"])

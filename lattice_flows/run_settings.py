"""The scalar settings of a run (the top-level spec keys), the spec's keys, and the seed offsets.

:class:`RunSettings` holds ``n_chains``, ``n_thermalization``, ``n_trajectories``, ``seed``,
``device``, ``dtype`` and ``start``; :data:`SPEC_KEYS` is every top-level key of a spec in the
order :meth:`lattice_flows.Simulation.to_spec` writes them.
"""

from __future__ import annotations

import attrs
import torch

from . import distributed
from .errors import ParameterError
from .params import choice, integer

__all__ = [
    "DTYPES", "RunSettings", "SPEC_KEYS", "SETTINGS_KEYS", "TRAINING_SEED_OFFSET", "FLOW_INIT_SEED_OFFSET",
    "MEASUREMENT_SEED_OFFSET",    "settings_device", "run_device",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_device(instance, attribute, value):
    if not isinstance(value, str):
        raise ParameterError(attribute.name, f"expected a device name such as 'cpu', 'cuda', 'cuda:1' or 'auto', got {value!r}")
    if value == "auto":
        return
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ParameterError(
            attribute.name, f"expected a device name such as 'cpu', 'cuda', 'cuda:1' or 'auto', got {value!r}"
        ) from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(attribute.name, f"device {value!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError(attribute.name, f"device {value!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
        return
    if device.type == "mps" and torch.backends.mps.is_available():
        return
    raise ParameterError(attribute.name, f"device {value!r} is not supported or not available; use 'cpu', 'cuda' or 'auto'")


@attrs.frozen(kw_only=True)
class RunSettings:
    """The scalar settings of a run (top-level spec keys)."""

    n_chains: int = integer(help="number of Markov chains advanced together as one batch", default=16, ge=1)
    n_thermalization: int = integer(help="updates per chain discarded before measuring", default=100, ge=0)
    n_trajectories: int = integer(help="measured updates per chain (rows per chain in the table)", default=1000, ge=1)
    seed: int = integer(
        help="seed of the run's random generator; same spec and seed give the same table (below 2^62, so that "
        "the offsets of training (2^40), of the flow's initial weights (2^41), of the measurements (2^42) and of the "
        "ranks (2^32 each) "
        "keep it within torch's 64-bit seeds)",
        default=0,
        ge=0,
        lt=2**62,
    )
    device: str = attrs.field(
        default="cpu",
        validator=_check_device,
        metadata={"help": "torch device: 'cpu', 'cuda', 'cuda:N', or 'auto' (CUDA when available)", "type": "device"},
    )
    dtype: str = choice(DTYPES, help="floating-point type of the fields", default="float64")
    start: str = choice(("hot", "cold"), help="initial fields: 'hot' draws from the prior, 'cold' is ordered", default="hot")


#: The keys of :class:`RunSettings`, in the order of its fields.
SETTINGS_KEYS = tuple(f.name for f in attrs.fields(RunSettings))
#: Top-level keys of a spec, in the order :meth:`lattice_flows.Simulation.to_spec` writes them.
SPEC_KEYS = ("lattice", "action", "flow", "training", "sampler", "observables") + SETTINGS_KEYS

#: Offset of the training generator's seed from the run's, so training and sampling draw different streams.
TRAINING_SEED_OFFSET = 1 << 40
#: Offset of the seed of a new flow's initial weights from the run's.
FLOW_INIT_SEED_OFFSET = 1 << 41
#: Offset of the measurement generator's seed from the run's (per rank as the run's generator:
#: ``distributed.rank_seed(seed + MEASUREMENT_SEED_OFFSET)``): stochastic observables draw from it, never from
#: the sampler's generator, so adding one does not change the chain.
MEASUREMENT_SEED_OFFSET = 1 << 42


def settings_device(settings: RunSettings) -> torch.device:
    """The device a run's settings name, ``"auto"`` resolved (CUDA when available); not yet this rank's."""
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings.device)


def run_device(settings: RunSettings) -> torch.device:
    """The device this process runs on: the settings' device, ``cuda`` being this rank's GPU (``LOCAL_RANK``)."""
    return distributed.local_device(settings_device(settings))

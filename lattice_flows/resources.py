"""Whether a run fits in memory, estimated from its spec before anything lattice-sized is built.

:func:`estimate` adds up the bytes a run holds at once: the fields of the chains (a few copies: the
fields, the momenta, the force, the proposal), the records of ``n_trajectories`` rows of every column
(kept during the run, stacked for a checkpoint, then the table) and a flow's work (the activations of
its layers for a batch, kept for the backward pass of FTHMC's force or of training). It is a lower
estimate: a run that it refuses cannot fit, while one it lets through may still run out (which
:func:`lattice_flows.cli.main` reports as a one-line error). :func:`available` is ``MemAvailable`` of
``/proc/meminfo`` on the CPU and the free memory of the device on CUDA.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import torch

from .params import is_size
from .run_table import RESERVED_COLUMNS

__all__ = [
    "Estimate", "estimate", "available", "format_bytes", "FIELD_COPIES", "RECORD_COPIES", "ALLOCATION_FAILURES",
    "is_allocation_failure",
]

#: Field-sized tensors per chain that an update holds at once (fields, momenta, force, proposal, ...).
FIELD_COPIES = 4
#: Copies of the records: the per-update tensors, their stack for a checkpoint, the table.
RECORD_COPIES = 3
#: Bytes of one recorded value (float64 or int64 columns).
RECORD_ITEMSIZE = 8
#: Columns the table has besides the observables (chain, trajectory, accepted, delta_H).
EXTRA_COLUMNS = len(RESERVED_COLUMNS)
#: A flow's layers and hidden channels when its spec does not give ``n_layers`` / ``hidden``.
DEFAULT_LAYERS, DEFAULT_HIDDEN = 8, 8
#: Activations kept per layer and hidden channel for the backward pass (at least one each).
FLOW_KEPT = 1


#: Texts (lower case) of the errors with which an allocation fails: the allocators' ``RuntimeError`` on the CPU
#: and CUDA, numpy's, and a size beyond 64 bits (``TypeError`` / ``OverflowError`` / ``RuntimeError``).
ALLOCATION_FAILURES = (
    "can't allocate memory", "out of memory", "storage size calculation overflowed", "overflow when unpacking",
    "int too big", "unable to allocate",
)


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to allocate memory: ``MemoryError``, ``torch.OutOfMemoryError``, or a
    ``RuntimeError``, ``TypeError`` or ``OverflowError`` whose text is one of :data:`ALLOCATION_FAILURES`.

    >>> is_allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 TB"))
    True
    >>> is_allocation_failure(RuntimeError("shape mismatch"))
    False
    """
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    if not isinstance(exc, (RuntimeError, TypeError, OverflowError)):
        return False
    text = str(exc).lower()
    return any(failure in text for failure in ALLOCATION_FAILURES)


class Estimate(dict):
    """Bytes of each part of a run, ``{"fields": ..., "records": ..., "flow": ...}``; ``total`` sums them."""

    @property
    def total(self) -> int:
        return sum(self.values())


def _positive_int(value: Any, default: int) -> int:
    # a value the flow's own validation will refuse (a bool, 0, beyond 64 bits) counts as the default here
    return value if is_size(value) else default


def estimate(
    field_shape: Sequence[int],
    *,
    n_chains: int,
    n_trajectories: int,
    n_columns: int,
    itemsize: int,
    flow: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
) -> Estimate:
    """The bytes a run holds at once, by part (Python integers: no overflow for any size).

    ``field_shape``: one configuration, e.g. ``(2, L_0, L_1)``; ``n_chains``: the chains of this process;
    ``n_columns``: the observables' columns; ``itemsize``: bytes of the field dtype; ``flow``: the flow's
    spec section (its ``n_layers`` and ``hidden`` are read when they are integers), if any;
    ``batch_size``: the training batch, if the flow is trained.
    """
    volume = math.prod(field_shape)
    parts = Estimate(
        fields=FIELD_COPIES * n_chains * volume * itemsize,
        records=RECORD_COPIES * n_chains * n_trajectories * (n_columns + EXTRA_COLUMNS) * RECORD_ITEMSIZE,
    )
    if flow is not None:
        section = flow if isinstance(flow, Mapping) else {}
        layers = _positive_int(section.get("n_layers"), DEFAULT_LAYERS)
        hidden = section.get("hidden")
        if isinstance(hidden, (list, tuple)) and hidden:
            width = sum(_positive_int(h, DEFAULT_HIDDEN) for h in hidden)
        else:
            width = DEFAULT_HIDDEN
        batch = max(n_chains, batch_size or 0)
        parts["flow"] = FLOW_KEPT * batch * volume * layers * width * itemsize
    return parts


def available(device: torch.device) -> tuple[int | None, str]:
    """Bytes free for a run on ``device`` and where the figure comes from; ``(None, ...)`` if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available physical pages (sysconf)"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``; any size (``'7.3e+08 TiB'`` beyond the units)."""
    n = float(min(n, 10**300))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError

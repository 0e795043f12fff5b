"""Checkpoint files: atomic writes, and reads that never unpickle arbitrary objects.

A checkpoint is a ``torch.save`` of plain data (dicts, lists, strings, numbers, tensors), read
back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import LatticeFlowsError

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "FORMAT", "VERSION"]

FORMAT = "lattice-flows checkpoint"
VERSION = 1


class CheckpointError(LatticeFlowsError, ValueError):
    """A checkpoint cannot be read, or does not fit the simulation it is loaded into."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint written by :func:`save_atomic`; :class:`CheckpointError` otherwise."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable lattice-flows checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lattice-flows checkpoint (no {FORMAT!r} marker)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')!r}; this lattice-flows reads version {VERSION}")
    return data

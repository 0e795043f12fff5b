"""Checkpoint files: atomic writes, and reads that never unpickle arbitrary objects.

A checkpoint is a ``torch.save`` of plain data (dicts, lists, strings, numbers, tensors), read
back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import LatticeFlowsError

__all__ = ["CheckpointError", "write_atomic", "save_atomic", "load_checkpoint", "FORMAT", "VERSION"]

FORMAT = "lattice-flows checkpoint"
VERSION = 1


class CheckpointError(LatticeFlowsError, ValueError):
    """A checkpoint cannot be read, or does not fit the simulation it is loaded into."""


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``.

    Readers see the old file or the complete new one, never a part: a killed job leaves no half file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` a checkpoint with :func:`write_atomic`: ``path`` is the old file or the new one."""
    return write_atomic(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **obj}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint written by :func:`save_atomic`; :class:`CheckpointError` otherwise."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first_line = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run to several lines
        raise CheckpointError(f"{path}: not a readable lattice-flows checkpoint ({type(exc).__name__}: {first_line})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lattice-flows checkpoint (no {FORMAT!r} marker)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')!r}; this lattice-flows reads version {VERSION}")
    return data

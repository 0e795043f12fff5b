"""Checkpoint files: atomic writes, a checksum, and reads that never unpickle arbitrary objects.

A checkpoint (version 2) is a one-line header followed by a payload::

    lattice-flows checkpoint 2 sha256=<64 hex digits> bytes=<payload length>\\n
    <payload: a torch.save of plain data (dicts, lists, strings, numbers, tensors)>

:func:`load_checkpoint` checks the header, the length (a truncated file) and the SHA-256 of the
payload (a flipped byte) before it reads the payload with ``torch.load(..., weights_only=True)``.
Version-1 files (a bare ``torch.save`` with a format marker, no checksum) are still read.
Every failure is a :class:`CheckpointError` in plain words; torch's own text never shows.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import LatticeFlowsError

__all__ = [
    "CheckpointError",
    "WriteError",
    "write_error",
    "write_atomic",
    "save_atomic",
    "load_checkpoint",
    "read_checkpoint",
    "FORMAT",
    "VERSION",
]

FORMAT = "lattice-flows checkpoint"
VERSION = 2
_HEADER = re.compile(rb"lattice-flows checkpoint (\d+) sha256=([0-9a-f]{64}) bytes=(\d+)\n")
_HEADER_MAX = 200  # bytes: the header line is about 110
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format: version-1 checkpoints, or a foreign torch file


class CheckpointError(LatticeFlowsError, ValueError):
    """A checkpoint cannot be read, or does not fit the simulation it is loaded into."""


class WriteError(LatticeFlowsError, OSError):
    """A file of a run cannot be written (a full disk, a read-only or vanished folder); the old file is intact.

    ``errno`` is the failed call's (``errno.ENOSPC`` for a full disk, or ``None``), ``filename`` the file.
    """

    def __init__(self, message: str, errno_: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.message, self.errno, self.filename = message, errno_, filename

    def __str__(self) -> str:
        return self.message


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: str | Path, exc: BaseException) -> WriteError:
    """The :class:`WriteError` for ``exc`` raised while writing ``path`` (``exc`` itself if it is one)."""
    if isinstance(exc, WriteError):
        return exc
    path = Path(path)
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += "; free some space, then continue with --resume"
    else:  # torch and pyarrow report a failed write in their own exception types
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"
        if _disk_full(path):
            reason = "No space left on device (ENOSPC); free some space, then continue with --resume"
    return WriteError(f"cannot write {path}: {reason}", getattr(exc, "errno", None), str(path))


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``.

    Readers see the old file or the complete new one, never a part: a killed job leaves no half file
    (only, after a SIGKILL, a ``.<name>.*.tmp`` beside it, which :class:`~lattice_flows.rundir.RunFolder`
    removes). The file gets the mode a plain ``open()`` would give it (``0o666 & ~umask``). A write
    that fails (``ENOSPC``: a full disk) raises :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, WriteError) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError) or _disk_full(path):
            raise write_error(path, exc) from None
        raise
    return path


def _disk_full(path: Path) -> bool:
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def save_atomic(obj: dict[str, Any], path: str | Path) -> str:
    """Write a version-2 checkpoint of ``obj`` (a header with the payload's SHA-256, then the payload) with
    :func:`write_atomic`: ``path`` is the old file or the new one. Returns the payload's SHA-256 (hex)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **obj}, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    blob = f"{FORMAT} {VERSION} sha256={digest} bytes={len(payload)}\n".encode() + payload
    write_atomic(path, lambda tmp: tmp.write_bytes(blob))
    return digest


def _torch_load(payload: bytes) -> Any:
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint written by :func:`save_atomic`; :class:`CheckpointError` otherwise."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """:func:`load_checkpoint`'s contents and the payload's SHA-256 as checked against the header
    (``None`` for a version-1 file, which has none)."""
    path = Path(path)
    bad = f"{path}: not a readable lattice-flows checkpoint"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not blob:
        raise CheckpointError(f"{bad}: the file is empty (a write that never finished?)")
    match = _HEADER.match(blob[:_HEADER_MAX])
    if match is None:
        if blob.startswith(FORMAT.encode()):
            raise CheckpointError(f"{bad}: its header is damaged (the file is corrupted)")
        if blob.startswith(_ZIP_MAGIC):
            return _load_version_1(blob, path, bad), None
        raise CheckpointError(f"{bad}: it does not start with the lattice-flows checkpoint header (a foreign file?)")
    version, expected, length = int(match.group(1)), match.group(2).decode(), int(match.group(3))
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version}; this lattice-flows reads versions 1 and {VERSION}")
    payload = blob[match.end():]
    if len(payload) < length:
        raise CheckpointError(f"{bad}: truncated ({len(payload)} of {length} payload bytes)")
    if len(payload) > length:
        raise CheckpointError(f"{bad}: {len(payload) - length} bytes more than its header says (the file is corrupted)")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{bad}: its SHA-256 checksum does not match its contents (the file is corrupted)")
    try:
        data = _torch_load(payload)
    except Exception:  # a checksum that matches damaged data: written so by another program
        raise CheckpointError(f"{bad}: its payload cannot be read although the checksum matches") from None
    return _check_marker(data, path, VERSION), actual


def _load_version_1(blob: bytes, path: Path, bad: str) -> dict[str, Any]:
    """A version-1 checkpoint (the bytes ``blob`` of a ``torch.save`` with the format marker and no
    checksum), or a foreign torch file."""
    try:
        data = _torch_load(blob)
    except Exception:  # torch's text (several lines, with advice to unpickle unsafely) is not shown
        raise CheckpointError(
            f"{bad}: a zip or torch file that is damaged, or holds objects other than plain data "
            "(a foreign torch.save is not loaded, for safety)"
        ) from None
    return _check_marker(data, path, 1)


def _check_marker(data: Any, path: Path, version: int) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lattice-flows checkpoint (a torch file without the {FORMAT!r} marker)")
    if data.get("version") != version:
        raise CheckpointError(f"{path}: not a readable lattice-flows checkpoint: its header says version {version}, its contents {data.get('version')!r}")
    return data

"""A run folder: every file one run writes, under fixed names, written atomically.

::

    spec.json          the resolved spec (every default written out); a resumed run must match it
    status.json        what has finished: training, sampling; the sampler as tuned; wall-clock seconds
    flow.pt            the flow checkpoint (Simulation.save), when the spec has a flow
    history.csv        the training history, one row per step
    chains.pt          the chains checkpoint (Simulation.run(checkpoint=...)), for --resume
    table.parquet      the observables table, one row per chain and trajectory (table.csv without pyarrow,
                       or as well when asked)
    summary.csv        mean, error, tau_int, exact value per observable; summary.txt the same as text
    figures/*.png      see lattice_flows.figures

    .lock              who holds the folder (pid, host, command, start time), see below

An existing folder is never overwritten by accident: :meth:`RunFolder.open` refuses it unless the
caller resumes, and resuming checks that the spec is the one the folder was made with; only
``n_trajectories`` may grow, which extends a finished run.

One process at a time: :meth:`RunFolder.open` takes an exclusive ``fcntl.flock`` on ``.lock``
before it looks at the folder's contents, and holds it until :meth:`RunFolder.release` (or the
process ends, even by SIGKILL: the kernel drops the lock). A second process is refused with a
:class:`RunFolderLocked` naming the holder. While holding it, ``open`` removes the ``.*.tmp``
files that a write killed half way left behind.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoint import write_atomic
from .errors import LatticeFlowsError
from .spec import resume_difference

__all__ = ["RunFolder", "RunFolderError", "RunFolderLocked", "resume_difference"]

LOCK_NAME = ".lock"



class RunFolderError(LatticeFlowsError):
    """A run folder cannot be created, resumed or read."""


class RunFolderLocked(RunFolderError):
    """Another process holds the run folder."""


def _ignorable(path: Path) -> bool:
    """The lock file, or a temporary file of :func:`~lattice_flows.checkpoint.write_atomic` left by a killed job."""
    return path.name == LOCK_NAME or (path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file())


def _write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def parquet_available() -> bool:
    """Whether pandas can write Parquet here (it needs pyarrow: ``pip install 'lattice-flows[parquet]'``)."""
    return importlib.util.find_spec("pyarrow") is not None


class RunFolder:
    """The files of one run under ``path`` (see the module docstring for the names)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec = self.path / "spec.json"
        self.status_file = self.path / "status.json"
        self.flow = self.path / "flow.pt"
        self.history = self.path / "history.csv"
        self.chains = self.path / "chains.pt"
        self.parquet = self.path / "table.parquet"
        self.csv = self.path / "table.csv"
        self.summary_csv = self.path / "summary.csv"
        self.summary_txt = self.path / "summary.txt"
        self.figures = self.path / "figures"
        #: Whether this process made the folder (by :meth:`open`), and the lock's file descriptor while held.
        self.created = False
        self._made_dir = False
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path: str | Path, spec: dict[str, Any], *, resume: bool) -> "RunFolder":
        """A new run folder for ``spec``, or, with ``resume``, the existing one made with the same spec.

        The folder comes back locked (see the module docstring); call :meth:`release` when done.
        With ``resume``, ``spec`` may have a larger ``n_trajectories`` than the folder's run: the
        run is extended, and ``spec.json`` rewritten.

        Raises :class:`RunFolderError` for an existing folder without ``resume``, a folder that is
        not a run folder, a resumed folder made with another spec, or one that cannot be written;
        :class:`RunFolderLocked` when another process holds the folder.
        """
        folder = cls(path)
        if folder.path.exists() and not folder.path.is_dir():
            raise RunFolderError(f"{folder.path}: exists and is not a lattice-flows run folder; choose another --out")
        if folder._has_files() and not folder.spec.exists():  # someone else's folder: write nothing into it
            raise RunFolderError(f"{folder.path}: exists and is not a lattice-flows run folder; choose another --out")
        try:
            existed = folder.path.is_dir()
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{folder.path}: cannot write the run folder ({exc.strerror or exc})") from None
        folder._made_dir = not existed
        folder._lock()
        try:
            folder._open_locked(spec, resume=resume)
        except BaseException:
            folder._discard() if not folder._has_files() else folder.release()
            raise
        return folder

    def _open_locked(self, spec: dict[str, Any], *, resume: bool) -> None:
        if self._has_files():
            if not self.spec.exists():
                raise RunFolderError(f"{self.path}: exists and is not a lattice-flows run folder; choose another --out")
            if not resume:
                raise RunFolderError(
                    f"{self.path}: a run folder already exists; pass --resume to continue it, or choose another --out"
                )
            saved = self.read_spec()
            why = resume_difference(saved, spec)
            if why is not None:
                raise RunFolderError(
                    f"{self.path}: the folder's run was made with another spec ({why}); "
                    "resume it with the same spec, or choose another --out"
                )
            self.remove_orphans()
            if saved != spec:  # more trajectories: the run is extended; its table is the old one until it ends
                self._write_spec(spec)
                self.update_status(sampling=f"extending to {spec['n_trajectories']} trajectories")
            return
        self.created = True
        self.remove_orphans()  # a spec.json that a killed job never finished
        self._write_spec(spec)

    def _write_spec(self, spec: dict[str, Any]) -> None:
        _write_text(self.spec, json.dumps(spec, indent=2) + "\n")  # a WriteError names the file

    def _has_files(self) -> bool:
        """Whether the folder exists and holds anything but the lock file and orphan ``.*.tmp`` files."""
        return self.path.is_dir() and any(not _ignorable(p) for p in self.path.iterdir())

    # -- the lock -----------------------------------------------------------------------------

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    def _lock(self) -> None:
        """Take the folder's exclusive lock and write who holds it; :class:`RunFolderLocked` if taken."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot write the run folder ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise RunFolderError(f"{self.path}: cannot lock the run folder ({exc.strerror or exc})") from None
            raise RunFolderLocked(
                f"{self.path}: the run folder is in use by {self.holder()}; wait for it to end, or choose another --out"
            ) from None
        try:
            current = os.stat(self.lock_file).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # the holder removed this lock file as we opened it (see _discard)
            os.close(fd)
            raise RunFolderLocked(f"{self.path}: the run folder was in use and has just been removed; try again")
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise RunFolderError(f"{self.lock_file}: cannot write ({exc.strerror or exc})") from None
        self._lock_fd = fd

    def hold(self) -> "RunFolder":
        """Lock an existing run folder (for a job that rewrites its summary and figures) and remove its orphans."""
        self.read_spec()  # a RunFolderError for a folder that is not a run folder
        self._lock()
        self.remove_orphans()
        return self

    #: How long :meth:`holder` waits for a holder that has just taken the lock to write its details (seconds).
    HOLDER_WAIT = 0.5

    def holder(self) -> str:
        """Who holds the lock, in words (from the lock file), e.g. ``pid 123 on host a (lattice-flows run s.toml), since ...``.

        A process that has just taken the lock writes its details a moment later: until then the file is empty,
        and this reads it again for up to :attr:`HOLDER_WAIT` seconds before it gives up on the details."""
        deadline = time.monotonic() + self.HOLDER_WAIT
        while True:
            try:
                info = json.loads(self.lock_file.read_text())
                return f"pid {info['pid']} on host {info['host']} ({info['command']}), since {info['started']}"
            except (OSError, ValueError, KeyError, TypeError):
                if time.monotonic() >= deadline:
                    return "another process (it has not written its details yet)"
                time.sleep(0.02)

    def release(self) -> None:
        """Give the lock back (the process's end does it too)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def remove_orphans(self) -> list[Path]:
        """Remove the ``.*.tmp`` files a killed write left (anywhere in the folder); only while holding the lock."""
        if not self.locked:
            raise RunFolderError(f"{self.path}: orphan files are only removed while holding the folder's lock")
        removed = []
        for tmp in self.path.rglob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def remove_if_only_spec(self) -> bool:
        """After a job failed before it wrote anything but ``spec.json``: remove what :meth:`open` made, so that
        the same command works once the cause is fixed. Only for a new folder that this process holds."""
        if not (self.created and self.locked):
            return False
        if any(p.name != "spec.json" and not _ignorable(p) for p in self.path.iterdir()):
            return False
        self.remove_orphans()
        self.spec.unlink(missing_ok=True)
        self._discard()
        return True

    def _discard(self) -> None:
        """Remove the lock file (while holding it, so that no other process can hold a removed one), release it,
        and remove the folder if :meth:`open` made it and it is empty now."""
        try:
            self.lock_file.unlink(missing_ok=True)
        except OSError:
            pass
        self.release()
        if self._made_dir:
            try:
                self.path.rmdir()
            except OSError:  # another process put something in it: leave it
                pass

    # -- reading ------------------------------------------------------------------------------

    def read_spec(self) -> dict[str, Any]:
        try:
            return json.loads(self.spec.read_text())
        except FileNotFoundError:
            raise RunFolderError(f"{self.path}: not a lattice-flows run folder (no spec.json)") from None
        except ValueError as exc:
            raise RunFolderError(f"{self.spec}: not valid JSON ({exc})") from None

    def status(self) -> dict[str, Any]:
        if not self.status_file.exists():
            return {}
        try:
            return json.loads(self.status_file.read_text())
        except ValueError as exc:
            raise RunFolderError(f"{self.status_file}: not valid JSON ({exc})") from None

    def read_table(self) -> pd.DataFrame:
        """The observables table (Parquet if written, else CSV), with ``attrs["spec"]`` (the resolved spec)
        and ``attrs["sampler"]`` (as tuned) as :meth:`Simulation.run` gave them: kept by Parquet in
        pandas >= 2.1, else taken from ``spec.json`` and ``status.json``."""
        table = self._read_table()
        if "spec" not in table.attrs and self.spec.exists():
            table.attrs["spec"] = self.read_spec()
        sampler = self.status().get("sampler") if "sampler" not in table.attrs else None
        if sampler is not None:
            table.attrs["sampler"] = sampler
        return table

    def _read_table(self) -> pd.DataFrame:
        try:
            if self.parquet.exists():
                return pd.read_parquet(self.parquet)
            if self.csv.exists():
                return pd.read_csv(self.csv)
        except Exception as exc:  # pyarrow and the CSV parser raise several types for damaged files
            raise RunFolderError(f"{self.path}: the table cannot be read ({type(exc).__name__}: {exc})") from None
        raise RunFolderError(f"{self.path}: no table yet (table.parquet or table.csv); has the run finished?")

    def read_history(self) -> pd.DataFrame | None:
        return pd.read_csv(self.history) if self.history.exists() else None

    # -- writing ------------------------------------------------------------------------------

    def update_status(self, **changes: Any) -> None:
        _write_text(self.status_file, json.dumps({**self.status(), **changes}, indent=2) + "\n")

    def write_table(self, table: pd.DataFrame, *, csv: bool = False) -> list[Path]:
        """Parquet (with pyarrow), and CSV when asked or when Parquet cannot be written."""
        written = []
        if parquet_available():
            written.append(write_atomic(self.parquet, lambda tmp: table.to_parquet(tmp, index=False)))
        if csv or not written:
            written.append(write_atomic(self.csv, lambda tmp: table.to_csv(tmp, index=False)))
        return written

    def write_history(self, history: pd.DataFrame) -> Path:
        return write_atomic(self.history, lambda tmp: history.to_csv(tmp, index=False))

    def write_summary(self, summary: pd.DataFrame, text: str) -> list[Path]:
        return [
            write_atomic(self.summary_csv, lambda tmp: summary.to_csv(tmp, index_label="observable")),
            _write_text(self.summary_txt, text + "\n"),
        ]

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

An existing folder is never overwritten by accident: :meth:`RunFolder.open` refuses it unless the
caller resumes, and resuming checks that the spec is the one the folder was made with.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoint import write_atomic
from .errors import LatticeFlowsError
from .spec import differing_keys

__all__ = ["RunFolder", "RunFolderError"]


class RunFolderError(LatticeFlowsError):
    """A run folder cannot be created, resumed or read."""


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

    @classmethod
    def open(cls, path: str | Path, spec: dict[str, Any], *, resume: bool) -> "RunFolder":
        """A new run folder for ``spec``, or, with ``resume``, the existing one made with the same spec.

        Raises :class:`RunFolderError` for an existing folder without ``resume``, a folder that is
        not a run folder, a resumed folder made with another spec, or one that cannot be written.
        """
        folder = cls(path)
        exists = folder.path.exists() and any(folder.path.iterdir()) if folder.path.is_dir() else folder.path.exists()
        if exists:
            if not folder.path.is_dir() or not folder.spec.exists():
                raise RunFolderError(f"{folder.path}: exists and is not a lattice-flows run folder; choose another --out")
            if not resume:
                raise RunFolderError(
                    f"{folder.path}: a run folder already exists; pass --resume to continue it, or choose another --out"
                )
            saved = folder.read_spec()
            if saved != spec:
                raise RunFolderError(
                    f"{folder.path}: the folder's run was made with another spec "
                    f"(differs in {', '.join(differing_keys(saved, spec))}); "
                    "resume it with the same spec, or choose another --out"
                )
            return folder
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
            _write_text(folder.spec, json.dumps(spec, indent=2) + "\n")
        except OSError as exc:
            raise RunFolderError(f"{folder.path}: cannot write the run folder ({exc.strerror or exc})") from None
        return folder

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
        if "sampler" not in table.attrs and self.status().get("sampler") is not None:
            table.attrs["sampler"] = self.status()["sampler"]
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

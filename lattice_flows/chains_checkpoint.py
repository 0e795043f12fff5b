"""The chains checkpoint of a run: the chains' state, and their measurements as a chain of segment files.

:func:`save_chains` writes the measurements since the last save as the next segment file
(``chains.records/segment-000000.pt``, ...), then the small state atomically over the checkpoint: the
fields (and the sampler's other state), the generator's state and the measurement generator's, the sampler as
tuned so far, and a count of segments, rows and a digest chained through the segments' SHA-256, so that a save costs the
same however long the run. :func:`resume_chains` reads it all back, checking every segment: a
missing, damaged or foreign one is a :class:`CheckpointError`, one written after the last state
(a kill between the two writes) is ignored and removed. Under several ranks every rank's part goes
into rank 0's files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import attrs
import torch

from . import distributed
from .base import Action, ChainState, Sampler
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_atomic
from .spec import build_component, component_spec, flow_section_with_defaults, resume_difference

__all__ = ["SavedRecords", "ResumedChains", "save_chains", "resume_chains", "remove_segments", "segments_dir"]


@attrs.define
class SavedRecords:
    """The measurements already in a checkpoint's segment files: ``rows`` per column, ``segments`` files, their
    chained ``digest``."""

    rows: int = 0
    segments: int = 0
    digest: str = ""


@attrs.frozen(kw_only=True)
class ResumedChains:
    """What a chains checkpoint holds, ready to go on: the generator, the sampler as tuned, the state, the
    updates done, this rank's records and what of them is saved."""

    generator: torch.Generator
    sampler: Sampler
    state: ChainState
    done: int
    records: dict[str, list[torch.Tensor]]
    saved: SavedRecords
    #: The measurement generator (stochastic observables), or ``None`` for a checkpoint written before it was
    #: saved (the run then goes on with a fresh one: such runs had no stochastic observable).
    measurement_generator: torch.Generator | None = None


def segments_dir(checkpoint: Path) -> Path:
    """The folder of a chains checkpoint's measurement segments: ``chains.pt`` -> ``chains.records``."""
    return checkpoint.with_suffix(".records")


def _segment_name(index: int) -> str:
    return f"segment-{index:06d}.pt"


def _chain_digest(previous: str, digest: str) -> str:
    """The digest of the segments so far, from the previous one and the new segment's SHA-256."""
    return hashlib.sha256((previous + digest).encode()).hexdigest()


def _to_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, torch.Tensor) else value


def remove_segments(checkpoint: Path, first: int) -> None:
    """Remove the segment files of ``checkpoint`` from number ``first`` on: never listed (rank 0 only)."""
    folder = segments_dir(checkpoint)
    if not distributed.is_main() or not folder.is_dir():
        return
    for segment in folder.glob("segment-*.pt"):
        number = segment.stem.removeprefix("segment-")
        if number.isdigit() and int(number) >= first:
            segment.unlink(missing_ok=True)


def save_chains(
    path: Path,
    spec: dict[str, Any],
    generator: torch.Generator,
    sampler: Sampler,
    state: ChainState,
    done: int,
    records: Mapping[str, list[torch.Tensor]],
    saved: SavedRecords,
    measurement_generator: torch.Generator | None = None,
) -> None:
    """Write the chains checkpoint ``path`` of the run of ``spec``: the measurements since the last save as the
    next segment file, then the small state atomically over ``path``. ``saved`` (what the segment files hold so
    far) is updated. ``measurement_generator``: the stochastic observables' generator, whose state is kept (the
    optional key ``measurement_generator`` of each rank's part). Every rank calls it; rank 0 writes."""
    start = saved.rows
    stop = len(next(iter(records.values()))) if records else 0
    new = {key: torch.stack(values[start:stop]).cpu() for key, values in records.items()} if stop > start else None
    part = {
        "generator": generator.get_state(),
        "sampler": component_spec("samplers", sampler),
        "state": {f.name: _to_cpu(getattr(state, f.name)) for f in attrs.fields(type(state))},
    }
    if measurement_generator is not None:
        part["measurement_generator"] = measurement_generator.get_state()
    gathered = distributed.all_gather_objects((part, new))
    saved.rows = stop
    if not distributed.is_main():
        return
    if stop > start:
        digest = save_atomic(
            {"kind": "chains records", "rows": [start, stop], "ranks": [g[1] for g in gathered]},
            segments_dir(path) / _segment_name(saved.segments),
        )
        saved.segments += 1
        saved.digest = _chain_digest(saved.digest, digest)
    save_atomic(
        {
            "kind": "chains",
            "spec": spec,
            "updates_done": done,
            "ranks": [g[0] for g in gathered],
            "records": {"rows": stop, "segments": saved.segments, "digest": saved.digest},
        },
        path,
    )


def resume_chains(
    path: Path, spec: dict[str, Any], action: Action, context: Mapping[str, Any], device: torch.device
) -> ResumedChains:
    """The chains of the checkpoint ``path``, for this rank, on ``device``; a :class:`CheckpointError` if it is not a
    chains checkpoint, was run by another number of processes or by a spec that ``spec`` cannot continue
    (:func:`lattice_flows.spec.resume_difference`). ``context``: what the sampler is injected with."""
    data = load_checkpoint(path)
    if data.get("kind") != "chains":
        raise CheckpointError(f"{path}: not a chains checkpoint (it holds {data.get('kind', 'a flow')!r})")
    if len(data["ranks"]) != distributed.world_size():
        raise CheckpointError(
            f"{path}: the chains were run by {len(data['ranks'])} processes; resume with as many (now {distributed.world_size()})"
        )
    part = data["ranks"][distributed.rank()]
    saved_spec = data["spec"]
    if isinstance(saved_spec.get("flow"), Mapping) and context.get("flow") is not None:
        saved_spec = {**saved_spec, "flow": flow_section_with_defaults(saved_spec["flow"], type(context["flow"]))}
    why = resume_difference(saved_spec, spec)
    if why is not None:
        raise CheckpointError(f"{path}: the chains checkpoint was written by another spec ({why}); start a new run instead")
    sampler = build_component("samplers", part["sampler"], f"{path}: sampler", context)
    fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in part["state"].items()}
    state = sampler.init(fields["x"], action)
    state = attrs.evolve(state, **fields)
    generator = torch.Generator(device=device)
    generator.set_state(part["generator"])
    measurement_generator = None
    if "measurement_generator" in part:  # optional: checkpoints written before it existed resume without it
        measurement_generator = torch.Generator(device=device)
        measurement_generator.set_state(part["measurement_generator"])
    saved = SavedRecords()
    if "records" not in data:  # version 1: the measurements inside the checkpoint, rewritten as segments next time
        pieces = [part["records"]] if part["records"] else []
        remove_segments(path, first=0)
    else:
        pieces = _read_segments(path, data["records"], saved)
    records: dict[str, list[torch.Tensor]] = {}
    for piece in pieces:
        for key, values in piece.items():
            records.setdefault(key, []).extend(values.to(device).unbind(0))
    return ResumedChains(
        generator=generator, sampler=sampler, state=state, done=int(data["updates_done"]), records=records, saved=saved,
        measurement_generator=measurement_generator,
    )


def _read_segments(path: Path, listed: Mapping[str, Any], saved: SavedRecords) -> list[dict[str, torch.Tensor]]:
    """This rank's measurements from the ``listed["segments"]`` segment files of the checkpoint ``path``,
    each checked by its own SHA-256 and all together by the chained digest; ``saved`` is filled in."""
    folder = segments_dir(path)
    pieces = []
    for index in range(int(listed["segments"])):
        segment = folder / _segment_name(index)
        if not segment.exists():
            raise CheckpointError(f"{path}: the measurements file {segment} it needs is missing; start a new run")
        data, digest = read_checkpoint(segment)
        if data.get("kind") != "chains records" or data["rows"][0] != saved.rows or digest is None:
            raise CheckpointError(f"{segment}: not the measurements that {path} continues from; start a new run")
        saved.digest = _chain_digest(saved.digest, digest)
        saved.rows, saved.segments = data["rows"][1], index + 1
        pieces.append(data["ranks"][distributed.rank()])
    if saved.rows != listed["rows"] or saved.digest != listed["digest"]:
        raise CheckpointError(
            f"{path}: its measurement segments in {folder} are not the ones it was saved with; start a new run"
        )
    remove_segments(path, first=saved.segments)  # written, then killed before the state counted it
    return pieces

"""A simulation built from a spec: lattice, action, sampler, observables and run settings.

Data flows spec -> components -> sampler -> table: :meth:`Simulation.from_spec` builds the
components, :meth:`Simulation.run` drives the sampler over ``n_chains`` chains at once and returns
a pandas table, :meth:`Simulation.summary` analyses it (:mod:`lattice_flows.analysis`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs
import numpy as np
import pandas as pd
import torch

from . import analysis, distributed, resources
from .base import Action, Flow, Observable, Sampler
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_atomic
from .errors import LatticeFlowsError, SpecError
from .params import choice, integer, is_size
from .progress import progress_bar
from .registry import OBSERVABLES
from .training import TrainingError, TrainingSettings, check_flow_health, sample_flow, train_flow
from .spec import build_component, build_from_params, check_table, component_spec, differing_keys, params_of, resume_difference, spec_fields

log = logging.getLogger(__name__)

__all__ = ["Simulation", "RunSettings", "RunInterrupted", "SPEC_KEYS"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_device(instance, attribute, value):
    from .errors import ParameterError

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
        "the offsets of training (2^40), of the flow's initial weights (2^41) and of the ranks (2^32 each) "
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


def _report_tuning(original: Sampler, tuned: Sampler) -> None:
    """Log the sampler's warning, if any, about its tuning during thermalization (rank 0 only)."""
    message = tuned.tuning_report(original)
    if message and distributed.is_main():
        log.warning("%s", message)


def _settings_device(settings: RunSettings) -> torch.device:
    """The device a run's settings name, ``"auto"`` resolved (CUDA when available); not yet this rank's."""
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings.device)


def _check_fits(spec: Mapping[str, Any], lattice_shape: tuple[int, ...], action: Action, settings: RunSettings) -> None:
    """A :class:`SpecError` naming ``lattice.shape``, ``n_chains`` and ``n_trajectories`` if the run cannot
    fit in the memory of its device (:mod:`lattice_flows.resources`), raised before anything of that size exists."""
    training = spec.get("training") if isinstance(spec.get("training"), Mapping) else {}
    observables = spec.get("observables")
    n_local = -(-settings.n_chains // distributed.world_size())  # the chains of one process
    parts = resources.estimate(
        action.field_shape(lattice_shape),
        n_chains=n_local,
        n_trajectories=settings.n_trajectories,
        n_columns=len(observables) if isinstance(observables, (list, tuple)) else 4,
        itemsize=DTYPES[settings.dtype].itemsize,
        flow=spec.get("flow"),
        batch_size=training.get("batch_size") if isinstance(training.get("batch_size"), int) else None,
    )
    device = _settings_device(settings)
    free, source = resources.available(device)
    if free is None or parts.total <= free:
        return
    keys = {
        "fields": "spec['lattice']['shape'] and spec['n_chains']",
        "records": "spec['n_trajectories'] and spec['n_chains']",
        "flow": "spec['lattice']['shape'], spec['n_chains'] or spec['training']['batch_size'], and spec['flow'] (n_layers, hidden)",
    }
    largest = max(parts, key=parts.get)
    shown = ", ".join(f"{name} {resources.format_bytes(n)}" for name, n in parts.items())
    raise SpecError(
        f"{keys[largest]}: the run needs at least {resources.format_bytes(parts.total)} ({shown}; lattice "
        f"{list(lattice_shape)}, {n_local} chains, {settings.n_trajectories} trajectories, {settings.dtype}) but only "
        f"{resources.format_bytes(free)} is available ({source}); reduce lattice.shape, n_chains or n_trajectories"
        + (" (or the flow's n_layers, hidden, training.batch_size)" if "flow" in parts else "")
    )


_ALLOCATION_FAILURES = (
    "can't allocate memory", "out of memory", "storage size calculation overflowed", "overflow when unpacking",
    "int too big", "unable to allocate",
)


def _build_flow_within_memory(build: Callable[[], Flow], section: Any) -> Flow:
    """``build()``, with an allocation failure (sizes such as ``n_bins`` or ``kernel_size`` whose weights cannot
    exist: ``MemoryError``, the allocator's ``RuntimeError``, a size beyond 64 bits) as a :class:`SpecError`."""
    try:
        return build()
    except (MemoryError, RuntimeError, TypeError, OverflowError) as exc:
        text = str(exc).strip()
        if not (isinstance(exc, MemoryError) or any(s in text.lower() for s in _ALLOCATION_FAILURES)):
            raise
        sizes = [k for k, v in section.items() if isinstance(v, (int, list)) and not isinstance(v, bool)] if isinstance(section, Mapping) else []
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        raise SpecError(
            f"spec['flow']: the flow's weights cannot be allocated ({first}); reduce its sizes"
            + (f" ({', '.join(sizes)})" if sizes else "")
        ) from None


def _check_action_finite(sim: "Simulation") -> None:
    """A :class:`SpecError` naming ``spec['action']`` if the action or its force of a field drawn from the
    prior is not finite in the run's dtype (couplings too large for it, e.g. a float32 overflow)."""
    generator = torch.Generator(device=sim.device).manual_seed(0)
    x = sim.action.sample_prior(1, sim.lattice_shape, generator=generator, dtype=sim.dtype, device=sim.device)
    s = sim.action(x)
    bad = "action" if not bool(torch.isfinite(s).all()) else None
    if bad is None and not bool(torch.isfinite(sim.action.force(x)).all()):
        bad = "force"
    if bad is not None:
        params = ", ".join(f"{k} = {v!r}" for k, v in sim.action.to_spec().items())
        raise SpecError(
            f"spec['action']: the {bad} of a field drawn from the prior is not finite in {sim.settings.dtype} "
            f"({params} on {list(sim.lattice_shape)}, S = {float(s[0])!r}); the couplings are too large for this dtype"
        )


def _to_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _segments_dir(checkpoint: Path) -> Path:
    """The folder of a chains checkpoint's measurement segments: ``chains.pt`` -> ``chains.records``."""
    return checkpoint.with_suffix(".records")


def _segment_name(index: int) -> str:
    return f"segment-{index:06d}.pt"


def _chain_digest(previous: str, digest: str) -> str:
    """The digest of the segments so far, from the previous one and the new segment's SHA-256."""
    return hashlib.sha256((previous + digest).encode()).hexdigest()


def _remove_segments(checkpoint: Path, first: int) -> None:
    """Remove the segment files of ``checkpoint`` from number ``first`` on: never listed (rank 0 only)."""
    folder = _segments_dir(checkpoint)
    if not distributed.is_main() or not folder.is_dir():
        return
    for segment in folder.glob("segment-*.pt"):
        number = segment.stem.removeprefix("segment-")
        if number.isdigit() and int(number) >= first:
            segment.unlink(missing_ok=True)


class RunInterrupted(LatticeFlowsError):
    """A run stopped on request (Ctrl-C) after ``done`` of ``total`` updates; its checkpoint is saved."""

    def __init__(self, done: int, total: int, checkpoint: Path | None):
        self.done, self.total, self.checkpoint = done, total, checkpoint
        where = f"; the chains are saved in {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"interrupted after {done} of {total} updates{where}")


#: Top-level keys of a spec, in the order :meth:`Simulation.to_spec` writes them.
SPEC_KEYS = ("lattice", "action", "flow", "training", "sampler", "observables") + tuple(
    f.name for f in attrs.fields(RunSettings)
)
_SETTINGS_KEYS = tuple(f.name for f in attrs.fields(RunSettings))

#: Offset of the training generator's seed from the run's, so training and sampling draw different streams.
TRAINING_SEED_OFFSET = 1 << 40
#: Offset of the seed of a new flow's initial weights from the run's.
FLOW_INIT_SEED_OFFSET = 1 << 41


@attrs.define(kw_only=True, eq=False)
class Simulation:
    """Everything a run needs, built and validated.

    ``action(x)`` gives ``S`` per configuration (``x`` of shape ``(B, *action.field_shape(lattice_shape))``,
    result ``(B,)``); ``observables`` maps column names to observables with the same call shape.
    """

    lattice_shape: tuple[int, ...]
    action: Action
    sampler: Sampler
    observables: dict[str, Observable]
    settings: RunSettings
    #: The flow (an ``nn.Module`` on the run's device and dtype), if the spec has a ``flow`` section.
    flow: Flow | None = None
    #: The ``training`` section, if any.
    training: TrainingSettings | None = None
    #: One row per training step so far (see :func:`lattice_flows.training.train_flow`).
    history: pd.DataFrame | None = None
    _optimizer: torch.optim.Optimizer | None = attrs.field(default=None, alias="_optimizer")
    _train_generator: torch.Generator | None = attrs.field(default=None, alias="_train_generator")

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Simulation":
        """Build a simulation from a spec dict (see the README for its keys). Raises :class:`SpecError`."""
        spec = check_table(spec, "spec", "the simulation spec")
        unknown = [k for k in spec if k not in SPEC_KEYS]
        if unknown:
            raise SpecError(f"spec: unknown key {unknown[0]!r}; accepted: {', '.join(SPEC_KEYS)}")
        for key in ("lattice", "action", "sampler"):
            if key not in spec:
                raise SpecError(f"spec: missing key {key!r}; required: lattice, action, sampler")

        lattice = check_table(spec["lattice"], "spec['lattice']", "the lattice")
        if set(lattice) != {"shape"}:
            extra = sorted(set(lattice) - {"shape"})
            raise SpecError(
                f"spec['lattice']: unknown key {extra[0]!r}; accepted: shape" if extra else "spec['lattice']: missing key 'shape'"
            )
        shape = lattice["shape"]
        if not (
            isinstance(shape, (list, tuple))
            and shape
            and all(is_size(n) for n in shape)
        ):
            raise SpecError(
                f"spec['lattice']['shape']: expected a list of positive integers (at least one, each at most 2**63 - 1) "
                f"such as [16, 16], got {shape!r}"
            )
        lattice_shape = tuple(shape)

        context: dict[str, Any] = {"lattice_shape": lattice_shape}
        action = build_component("actions", spec["action"], "spec['action']", context)
        try:
            action.field_shape(lattice_shape)
        except ValueError as exc:
            raise SpecError(f"spec['lattice']['shape']: {exc}") from None
        context["action"] = action
        settings_spec = {k: spec[k] for k in _SETTINGS_KEYS if k in spec}
        settings = build_from_params(RunSettings, settings_spec, what="the run", path="spec", context={})
        _check_fits(spec, lattice_shape, action, settings)  # before any flow or field of that size is built

        flow = None
        if spec.get("flow") is not None:
            # the initial weights follow the spec's seed (not torch's global generator), so that the
            # same spec gives the same flow in every process: reruns, resumed runs, and every rank
            seed = spec.get("seed", 0) if isinstance(spec.get("seed", 0), int) else 0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((seed + FLOW_INIT_SEED_OFFSET) % 2**63)
                flow = _build_flow_within_memory(lambda: cls._build_flow(spec["flow"], action, context), spec["flow"])
            context["flow"] = flow
        training = None
        if spec.get("training") is not None:
            if flow is None:
                raise SpecError("spec['training']: there is no 'flow' section, so there is nothing to train")
            table = check_table(spec["training"], "spec['training']", "the training settings")
            training = build_from_params(TrainingSettings, table, what="training", path="spec['training']", context={})

        sampler = build_component("samplers", spec["sampler"], "spec['sampler']", context)
        try:
            sampler.check_action(action)
        except ValueError as exc:
            raise SpecError(f"spec['sampler']: {exc}") from None

        if "observables" in spec:
            observables = cls._build_observables(spec["observables"], action, context)
        else:
            observables = cls._default_observables(action, context)

        sim = cls(
            lattice_shape=lattice_shape,
            action=action,
            sampler=sampler,
            observables=observables,
            settings=settings,
            flow=flow,
            training=training,
        )
        if flow is not None:
            flow.to(device=sim.device, dtype=sim.dtype)
        _check_action_finite(sim)
        return sim

    @staticmethod
    def _build_flow(section: Any, action: Action, context: Mapping[str, Any]) -> Flow:
        from .registry import FLOWS

        name = section if isinstance(section, str) else check_table(section, "spec['flow']", "a flow").get("name")
        if isinstance(name, str) and name in FLOWS.names():
            cls = FLOWS.get(name)
            if cls.theory != action.theory:
                raise SpecError(
                    f"spec['flow']: flow {name!r} transforms {cls.theory} fields, but the action is a {action.theory} theory"
                )
            try:
                cls.check_lattice(context["lattice_shape"])
            except ValueError as exc:
                raise SpecError(f"spec['lattice']['shape']: {exc}") from None
        return build_component("flows", section, "spec['flow']", context)

    @staticmethod
    def _build_observables(entries: Any, action: Action, context: Mapping[str, Any]) -> dict[str, Observable]:
        if not isinstance(entries, (list, tuple)):
            raise SpecError(
                "spec['observables']: expected a list of observable names or tables "
                f"(e.g. ['plaquette', {{'name': 'wilson_loop', 'R': 2, 'T': 2}}]), got {entries!r}"
            )
        observables: dict[str, Observable] = {}
        for i, entry in enumerate(entries):
            path = f"spec['observables'][{i}]"
            column = None
            if isinstance(entry, Mapping) and "column" in entry:
                column = entry["column"]
                if not isinstance(column, str) or not column:
                    raise SpecError(f"{path}['column']: expected a non-empty string, got {column!r}")
                entry = {k: v for k, v in entry.items() if k != "column"}
            obs = build_component("observables", entry, path, context)
            name = OBSERVABLES.name_of(type(obs))
            if obs.theory != action.theory:
                fitting = [n for n, e in OBSERVABLES.entries().items() if getattr(e.cls, "theory", None) == action.theory]
                raise SpecError(
                    f"{path}: observable {name!r} measures {obs.theory} fields, but the action is a "
                    f"{action.theory} theory; observables for {action.theory}: {', '.join(sorted(fitting)) or '(none)'}"
                )
            if column is None:
                params = obs.to_spec()
                column = name if not params else name + "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")"
            if column in observables or column in ("chain", "trajectory", "accepted", "delta_H"):
                raise SpecError(f"{path}: column name {column!r} is used twice; give one entry a different 'column'")
            observables[column] = obs
        return observables

    @staticmethod
    def _default_observables(action: Action, context: Mapping[str, Any]) -> dict[str, Observable]:
        """Every registered observable of the action's theory that needs no parameters."""
        observables = {}
        for name, entry in sorted(OBSERVABLES.entries().items()):
            cls = entry.cls
            if getattr(cls, "theory", None) != action.theory:
                continue
            if any(f.default is attrs.NOTHING for f in spec_fields(cls)):
                continue
            observables[name] = build_component("observables", name, f"spec['observables'] (default {name!r})", context)
        return observables

    def to_spec(self) -> dict[str, Any]:
        """A spec dict, with every default written out, that builds an equal simulation."""
        observables: list[Any] = []
        for column, obs in self.observables.items():
            section = component_spec("observables", obs)
            default_column = section["name"] if len(section) == 1 else None
            if column == default_column:
                observables.append(section["name"])
            else:
                observables.append({**section, "column": column})
        spec: dict[str, Any] = {
            "lattice": {"shape": list(self.lattice_shape)},
            "action": component_spec("actions", self.action),
        }
        if self.flow is not None:
            spec["flow"] = component_spec("flows", self.flow)
        if self.training is not None:
            spec["training"] = params_of(self.training)
        spec["sampler"] = component_spec("samplers", self.sampler)
        spec["observables"] = observables
        spec.update(params_of(self.settings))
        return copy.deepcopy(spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Simulation):
            return NotImplemented
        return self.to_spec() == other.to_spec()

    def evolve(self, **changes: Any) -> "Simulation":
        """A copy with run settings changed (``n_chains=64``), e.g. for sweeps; it shares the flow."""
        return attrs.evolve(self, settings=attrs.evolve(self.settings, **changes))

    # -- flows: sampling, training, checkpoints ----------------------------------------------

    def _require_flow(self, what: str) -> Flow:
        if self.flow is None:
            raise SpecError(f"spec: {what} needs a 'flow' section, and this spec has none")
        return self.flow

    @torch.no_grad()
    def sample_flow(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fields from the flow and their model log-density ``log q(x)``: ``(n, *field_shape)``, ``(n,)``."""
        flow = self._require_flow("sampling a flow")
        generator = generator if generator is not None else self.generator()
        return sample_flow(flow, self.action, self.lattice_shape, n, generator=generator, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def flow_quality(self, n: int = 1024, generator: torch.Generator | None = None, *, batch_size: int = 256) -> dict[str, float]:
        """ESS and reverse-KL loss ``mean(log q + S)`` of the flow on ``n`` fresh samples on this
        simulation's lattice (``self.lattice_shape``, whatever lattice the flow was trained on),
        drawn ``batch_size`` at a time from ``generator`` (default: a fresh :meth:`generator`, so
        the run's own stream is untouched). The ESS is ``(sum w)^2 / (n sum w^2)`` over all ``n``."""
        from .training import effective_sample_size

        for name, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"flow_quality: {name} must be a positive integer, got {value!r}")
        generator = generator if generator is not None else self.generator()
        log_w = []
        for start in range(0, n, batch_size):
            x, log_q = self.sample_flow(min(batch_size, n - start), generator)
            log_w.append(-(self.action(x) + log_q))
        log_w = torch.cat(log_w)
        return {"ess": float(effective_sample_size(log_w)), "loss": float(-log_w.mean())}

    def optimizer(self) -> torch.optim.Optimizer:
        """The Adam optimizer of the flow's parameters (kept across :meth:`train` calls and checkpoints)."""
        flow = self._require_flow("an optimizer")
        if self._optimizer is None:
            lr = (self.training or TrainingSettings()).lr
            self._optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
        return self._optimizer

    def _training_generator(self) -> torch.Generator:
        if self._train_generator is None:
            seed = distributed.rank_seed(self.settings.seed + TRAINING_SEED_OFFSET)
            self._train_generator = torch.Generator(device=self.device).manual_seed(seed)
        return self._train_generator

    @property
    def training_done(self) -> bool:
        """Whether the flow has used its whole training budget (``n_steps`` or ``max_seconds``)."""
        if self.training is None:
            return True
        if self.history is None or not len(self.history):
            return False
        last = self.history.iloc[-1]
        return self.training.progress(int(last["step"]) + 1, float(last["seconds"])) >= 1.0

    def train(
        self,
        *,
        progress: bool | None = None,
        pause_at_seconds: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> pd.DataFrame:
        """Train the flow (reverse KL) up to ``training.n_steps`` steps; returns the whole history.

        A loaded checkpoint continues where it stopped. ``progress``: a tqdm bar (default: only
        when standard error is a terminal). ``pause_at_seconds``: return once the cumulative training
        time reaches this, leaving the schedule as it is (to measure along the way; a later call goes on).
        ``should_stop()``: asked after each step; training returns early when it is true.
        """
        flow = self._require_flow("training")
        settings = self.training or TrainingSettings()
        try:
            self.history = train_flow(
                flow,
                self.action,
                self.lattice_shape,
                settings,
                optimizer=self.optimizer(),
                generator=self._training_generator(),
                dtype=self.dtype,
                device=self.device,
                history=self.history,
                progress=progress,
                pause_at_seconds=pause_at_seconds,
                should_stop=should_stop,
            )
        except TrainingError as exc:
            self.history = exc.history
            raise
        return self.history

    def save(self, path) -> None:
        """Write the spec, the flow's weights, optimizer and training-RNG state, and the training history.

        The write is atomic: ``path`` is the previous checkpoint or the complete new one, never a part.
        Under several ranks every rank must call it (the ranks' training-RNG states are gathered);
        only rank 0 writes.
        """
        flow = self._require_flow("a checkpoint")
        rng = self._train_generator.get_state() if self._train_generator is not None else None
        rngs = distributed.all_gather_objects(rng)
        if not distributed.is_main():
            return
        save_atomic(
            {
                "spec": self.to_spec(),
                "flow": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
                "optimizer": self._optimizer.state_dict() if self._optimizer is not None else None,
                # one state per rank, so that every rank of a resumed run continues its own stream
                "training_rng": None if rng is None else rngs,
                "history": None if self.history is None else self.history.to_dict("list"),
                # the lattice the history was trained on (Simulation.load puts it in history.attrs)
                "training_lattice": None if self.history is None else list(self.history.attrs.get("lattice_shape", self.lattice_shape)),
            },
            path,
        )

    @classmethod
    def load(cls, path, **overrides: Any) -> "Simulation":
        """A simulation from a checkpoint, with top-level spec keys replaced by ``overrides``.

        ``Simulation.load("flow.pt", lattice={"shape": [16, 16]})`` puts a flow trained on 8x8 on a
        16x16 lattice (the weights know no size; ``history.attrs["lattice_shape"]`` keeps the 8x8
        of the training); ``training={...}`` continues training from the loaded weights, optimizer
        state and history. A ``flow`` override that differs from the
        checkpoint's is an error naming what differs.
        """
        data = load_checkpoint(path)
        saved = data["spec"]
        for key in overrides:
            if key not in SPEC_KEYS:
                raise SpecError(f"Simulation.load: unknown spec key {key!r}; accepted: {', '.join(SPEC_KEYS)}")
        sim = cls.from_spec({**saved, **overrides})
        flow = sim._require_flow("loading a checkpoint")
        new_flow = sim.to_spec()["flow"]
        if new_flow != saved["flow"]:
            keys = differing_keys(saved["flow"], new_flow)
            diffs = "; ".join(f"{k}: checkpoint {saved['flow'].get(k)!r}, spec {new_flow.get(k)!r}" for k in keys)
            raise CheckpointError(f"{path}: the checkpoint's flow does not match the spec's ({diffs})")
        try:
            flow.load_state_dict(data["flow"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: the flow's weights do not fit the spec's flow: {exc}") from None
        if data.get("optimizer") is not None:
            sim.optimizer().load_state_dict(data["optimizer"])
        rngs = data.get("training_rng")
        if isinstance(rngs, torch.Tensor):  # written by a single process before per-rank states
            rngs = [rngs]
        if rngs is not None and sim.device.type == "cpu":
            if len(rngs) == distributed.world_size():
                sim._training_generator().set_state(rngs[distributed.rank()])
            else:
                log.warning(
                    "%s: training RNG states of %d ranks, but %d ranks now: training continues with fresh streams",
                    path, len(rngs), distributed.world_size(),
                )
        if data.get("history") is not None:
            sim.history = pd.DataFrame(data["history"])
            # the lattice the flow was trained on, which an override may change (figures, log lines)
            sim.history.attrs["lattice_shape"] = list(data.get("training_lattice") or saved["lattice"]["shape"])
        return sim

    def check_flow(self) -> dict[str, Any] | None:
        """When the sampler goes through the flow: its health on fresh samples of this lattice
        (:func:`~lattice_flows.training.check_flow_health`), raising
        :class:`~lattice_flows.training.FlowHealthError` if a weight, the loss or the ESS is not finite.
        Returns the report, or ``None`` when no flow is sampled through."""
        if self.flow is None or getattr(self.sampler, "flow", None) is None:
            return None
        return check_flow_health(
            self.flow, self.action, self.lattice_shape, dtype=self.dtype, device=self.device, seed=self.settings.seed,
            what=f"the flow ({component_spec('flows', self.flow)['name']})",
        )

    # -- running ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The spec's device; under several ranks ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
        return distributed.local_device(_settings_device(self.settings))

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.settings.dtype]

    def generator(self) -> torch.Generator:
        """A fresh generator on the run's device, seeded with the spec's seed (rank ``r`` > 0: see
        :func:`lattice_flows.distributed.rank_seed`)."""
        return torch.Generator(device=self.device).manual_seed(distributed.rank_seed(self.settings.seed))

    def local_chains(self) -> range:
        """The chain ids this process runs: all of them, or this rank's block under several ranks."""
        return distributed.chain_range(self.settings.n_chains)

    def initial_fields(self, generator: torch.Generator) -> torch.Tensor:
        """Starting fields for this process's chains, ``(len(local_chains()), *field_shape)``."""
        n, kw = len(self.local_chains()), {"dtype": self.dtype, "device": self.device}
        if self.settings.start == "cold":
            return self.action.cold_start(n, self.lattice_shape, **kw)
        return self.action.sample_prior(n, self.lattice_shape, generator=generator, **kw)

    def measure(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every observable on the batch ``x``: ``{column: (B,)}``."""
        return {column: obs(x) for column, obs in self.observables.items()}

    def _context(self) -> dict[str, Any]:
        context: dict[str, Any] = {"lattice_shape": self.lattice_shape, "action": self.action}
        if self.flow is not None:
            context["flow"] = self.flow
        return context

    @torch.no_grad()
    def run(
        self,
        initial: torch.Tensor | None = None,
        *,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 100,
        progress: bool | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> pd.DataFrame:
        """Thermalize, then sample; one row per chain and measured trajectory.

        ``initial``: fields to start the chains from, ``(n_chains, *field_shape)`` (for example
        equilibrium configurations from an exact sampler), instead of the ``start`` setting.

        Columns: ``chain``, ``trajectory`` (0-based, after thermalization), ``accepted`` (bool),
        ``delta_H``, whatever else the sampler reports, then one column per observable. Rows are
        ordered by chain, then trajectory. ``table.attrs["sampler"]`` is the sampler's spec section
        as it ran the measured trajectories (a tuned step size shows there); ``table.attrs["spec"]``
        the whole resolved spec (:meth:`to_spec`), so that runs can be joined with their parameters
        (:func:`lattice_flows.concat_runs`).

        ``checkpoint``: a file for the chains' state. It is written (atomically) every
        ``checkpoint_every`` updates and at the end; if it exists when the run starts, the run
        continues from it, so that on the CPU the table is row for row the one an uninterrupted run
        gives; a larger ``n_trajectories`` than the checkpoint's extends the run (nothing else may
        differ). It holds the fields (and the sampler's other state, such as FTHMC's latent field),
        the generator's state and the sampler as tuned so far, rewritten at every save; the
        measurements are appended, one segment file per save with the rows since the last, in the
        folder ``<checkpoint stem>.records`` beside it (``chains.records/segment-000000.pt``, ...), so
        that a save costs the same however long the run. The checkpoint counts the segments and
        chains their SHA-256 into one digest: a missing, damaged or foreign segment is an error, one
        written after the last checkpoint (a kill between the two writes) is ignored and removed.
        ``should_stop()``: asked after every update; when true, the checkpoint is written and
        :class:`RunInterrupted` raised. ``progress``: a tqdm bar with the running acceptance and
        ``delta_H`` (default: only when standard error is a terminal). A sampler that goes through a
        broken flow is refused before the first update (:meth:`check_flow`).
        """
        self.check_flow()
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"run(checkpoint_every=...): expected an integer >= 1 (updates between saves), got {checkpoint_every!r}")
        n_therm, n_traj = self.settings.n_thermalization, self.settings.n_trajectories
        total = n_therm + n_traj
        chains = self.local_chains()
        checkpoint = Path(checkpoint) if checkpoint is not None else None
        saved = {"rows": 0, "segments": 0, "digest": ""}  # the measurements in the checkpoint's segment files
        if checkpoint is not None and checkpoint.exists():
            generator, sampler, state, done, records, saved = self._resume(checkpoint)
        else:
            if checkpoint is not None:
                _remove_segments(checkpoint, first=0)  # a previous run's, never to be read again
            generator = self.generator()
            sampler = self.sampler
            if initial is None:
                initial = self.initial_fields(generator)
            else:
                expected = (self.settings.n_chains, *self.action.field_shape(self.lattice_shape))
                if tuple(initial.shape) != expected:
                    raise ValueError(
                        f"run(initial=...): expected fields of shape {expected} (n_chains, *field_shape), got {tuple(initial.shape)}"
                    )
                initial = initial[chains.start : chains.stop].to(device=self.device, dtype=self.dtype)
            state = sampler.init(initial, self.action)
            done, records = 0, {}

        def save():
            if checkpoint is not None:
                self._save_chains(checkpoint, generator, sampler, state, done, records, saved)

        progress = progress if distributed.is_main() else False
        accepted_sum, accepted_n = 0.0, 0
        bar = progress_bar(total, done, progress, desc="thermalizing" if done < n_therm else "sampling", unit="traj")
        try:
            while done < total:
                state, info = sampler.step(state, self.action, generator)
                if done < n_therm:
                    sampler = sampler.adapt(info, done)  # tuning (a step size, say) only while thermalizing
                    if done + 1 == n_therm:
                        _report_tuning(self.sampler, sampler)
                else:
                    for key, value in {**info, **self.measure(state.x)}.items():
                        records.setdefault(key, []).append(value)
                done += 1
                if bar is not None:  # running acceptance of this phase, and the last update's mean delta_H
                    if done == n_therm + 1 or done == 1:
                        accepted_sum, accepted_n = 0.0, 0
                    accepted_sum += info["accepted"].float().sum().item()
                    accepted_n += info["accepted"].numel()
                    bar.update(1)
                    bar.set_description("thermalizing" if done < n_therm else "sampling", refresh=False)
                    bar.set_postfix(acc=f"{accepted_sum / accepted_n:.3f}", dH=f"{info['delta_H'].float().mean().item():.3g}", refresh=False)
                if done < total and checkpoint is not None and done % checkpoint_every == 0:
                    save()
                if done < total and should_stop is not None and distributed.any_rank(should_stop()):
                    save()
                    raise RunInterrupted(done, total, checkpoint)
        finally:
            if bar is not None:
                bar.close()
        save()
        table = self._table(records, chains)
        if distributed.is_distributed():  # the one table of all chains, on every rank
            table = pd.concat(distributed.all_gather_objects(table), ignore_index=True)
        table.attrs["sampler"] = component_spec("samplers", sampler)  # as tuned during thermalization
        table.attrs["spec"] = self.to_spec()  # the whole resolved spec (lattice_flows.concat_runs reads it)
        return table

    def _save_chains(self, path: Path, generator, sampler: Sampler, state, done: int, records, saved) -> None:
        """Write the chains checkpoint: the measurements since the last save as the next segment file, then the
        small state atomically over ``path``. The state holds the number of segments and rows and a digest
        chained through the segments' SHA-256, so that it keeps its size however long the run. Under several
        ranks, every rank's part goes into rank 0's files. ``saved``: ``{"rows", "segments", "digest"}``
        so far, updated here."""
        start = saved["rows"]
        stop = len(next(iter(records.values()))) if records else 0
        new = {key: torch.stack(values[start:stop]).cpu() for key, values in records.items()} if stop > start else None
        part = {
            "generator": generator.get_state(),
            "sampler": component_spec("samplers", sampler),
            "state": {f.name: _to_cpu(getattr(state, f.name)) for f in attrs.fields(type(state))},
        }
        gathered = distributed.all_gather_objects((part, new))
        saved["rows"] = stop
        if not distributed.is_main():
            return
        if stop > start:
            digest = save_atomic(
                {"kind": "chains records", "rows": [start, stop], "ranks": [g[1] for g in gathered]},
                _segments_dir(path) / _segment_name(saved["segments"]),
            )
            saved["segments"] += 1
            saved["digest"] = _chain_digest(saved["digest"], digest)
        save_atomic(
            {
                "kind": "chains",
                "spec": self.to_spec(),
                "updates_done": done,
                "ranks": [g[0] for g in gathered],
                "records": {"rows": stop, "segments": saved["segments"], "digest": saved["digest"]},
            },
            path,
        )

    def _resume(self, path: Path):
        data = load_checkpoint(path)
        if data.get("kind") != "chains":
            raise CheckpointError(f"{path}: not a chains checkpoint (it holds {data.get('kind', 'a flow')!r})")
        if len(data["ranks"]) != distributed.world_size():
            raise CheckpointError(
                f"{path}: the chains were run by {len(data['ranks'])} processes; resume with as many (now {distributed.world_size()})"
            )
        part = data["ranks"][distributed.rank()]
        why = resume_difference(data["spec"], self.to_spec())
        if why is not None:
            raise CheckpointError(f"{path}: the chains checkpoint was written by another spec ({why}); start a new run instead")
        sampler = build_component("samplers", part["sampler"], f"{path}: sampler", self._context())
        fields = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in part["state"].items()}
        state = sampler.init(fields["x"], self.action)
        state = attrs.evolve(state, **fields)
        generator = torch.Generator(device=self.device)
        generator.set_state(part["generator"])
        saved = {"rows": 0, "segments": 0, "digest": ""}
        if "records" not in data:  # version 1: the measurements inside the checkpoint, rewritten as segments next time
            pieces = [part["records"]] if part["records"] else []
            _remove_segments(path, first=0)
        else:
            pieces = self._read_segments(path, data["records"], saved)
        records: dict[str, list[torch.Tensor]] = {}
        for piece in pieces:
            for key, values in piece.items():
                records.setdefault(key, []).extend(values.to(self.device).unbind(0))
        return generator, sampler, state, int(data["updates_done"]), records, saved

    def _read_segments(self, path: Path, listed: dict[str, Any], saved: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """This rank's measurements from the ``listed["segments"]`` segment files of the checkpoint ``path``,
        each checked by its own SHA-256 and all together by the chained digest; ``saved`` is filled in."""
        folder = _segments_dir(path)
        pieces = []
        for index in range(int(listed["segments"])):
            segment = folder / _segment_name(index)
            if not segment.exists():
                raise CheckpointError(f"{path}: the measurements file {segment} it needs is missing; start a new run")
            data, digest = read_checkpoint(segment)
            if data.get("kind") != "chains records" or data["rows"][0] != saved["rows"] or digest is None:
                raise CheckpointError(f"{segment}: not the measurements that {path} continues from; start a new run")
            saved["digest"] = _chain_digest(saved["digest"], digest)
            saved["rows"], saved["segments"] = data["rows"][1], index + 1
            pieces.append(data["ranks"][distributed.rank()])
        if saved["rows"] != listed["rows"] or saved["digest"] != listed["digest"]:
            raise CheckpointError(
                f"{path}: its measurement segments in {folder} are not the ones it was saved with; start a new run"
            )
        _remove_segments(path, first=saved["segments"])  # written, then killed before the state counted it
        return pieces

    def _table(self, records: dict[str, list[torch.Tensor]], chains: range) -> pd.DataFrame:
        n_traj = self.settings.n_trajectories
        columns: dict[str, Any] = {
            "chain": np.repeat(np.arange(chains.start, chains.stop), n_traj),
            "trajectory": np.tile(np.arange(n_traj), len(chains)),
        }
        for key, values in records.items():
            # (n_traj, n_chains) -> chain-major rows
            columns[key] = torch.stack(values).T.reshape(-1).cpu().numpy()
        return pd.DataFrame(columns)

    # -- analysis ---------------------------------------------------------------------------

    def summary(self, table: pd.DataFrame, *, tau_exp: float | str | None = None) -> pd.DataFrame:
        """Mean, error and ``tau_int`` of every column, checked, with exact values where known.

        Rows (index ``observable``): ``accepted`` (the acceptance rate), ``delta_H``,
        ``exp(-delta_H)`` (1 in expectation for an exact sampler; marked unreliable where a heavy
        tail of ``delta_H`` biases its sample mean), ``delta_H_identity(K=2)`` (exactly 1 for an
        exact sampler, with an honest error whatever the tail: the check to read), each observable
        and the higher moments it asks for (``topological_charge^2``). Columns of
        :func:`lattice_flows.analysis.summarize` (errors from the Gamma method, or from binning
        where a slow mode makes that larger; ``drift`` and ``reliable``: a chain that has not
        thermalized, a window that did not close) plus ``exact`` and ``pull``
        (``(mean - exact) / error``). ``docs/reading-results.md`` explains how to read it.
        ``tau_exp`` (a number of updates, or a row such as ``"topological_charge"``) adds the
        slowest mode's exponential tail to every ``tau_int`` (:func:`lattice_flows.analysis.summarize`).
        """
        derived = {}
        exact: dict[str, float] = {}
        for column, obs in self.observables.items():
            values = obs.exact()
            for power in obs.moments:
                label = column if power == 1 else f"{column}^{power}"
                if power != 1:
                    derived[label] = lambda t, c=column, p=power: t[c].astype(float) ** p
                if power in values:
                    exact[label] = values[power]
        result = analysis.summarize(table, derived=derived, tau_exp=tau_exp)
        if "exp(-delta_H)" in result.index:
            exact["exp(-delta_H)"] = 1.0  # holds for every exact sampler with a Hamiltonian (and trivially without)
        for label in result.index:
            if label.startswith("delta_H_identity("):
                exact[label] = 1.0  # <e^-dH 1[dH >= -K]> + P(dH > K) = 1 for every exact sampler
        result["exact"] = pd.Series(exact, dtype=float).reindex(result.index)
        result["pull"] = (result["mean"] - result["exact"]) / result["error"]
        return result

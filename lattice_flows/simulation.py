"""A simulation built from a spec: lattice, action, sampler, observables and run settings.

Data flows spec -> components -> sampler -> table: :meth:`Simulation.from_spec` builds the
components, :meth:`Simulation.run` drives the sampler over ``n_chains`` chains at once and returns
a pandas table, :meth:`Simulation.summary` analyses it (:mod:`lattice_flows.analysis`).

:class:`Simulation` is a facade with one method per thing a user does; the work is done in modules
with one job each (``docs/architecture.md``): :mod:`~lattice_flows.run_builder` (spec -> parts and
back), :mod:`~lattice_flows.chain_driver` (the updates), :mod:`~lattice_flows.chains_checkpoint`,
:mod:`~lattice_flows.flow_trainer` (optimizer, training generator, flow checkpoints),
:mod:`~lattice_flows.run_table` and :mod:`~lattice_flows.run_summary`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs
import pandas as pd
import torch

from . import distributed
from .base import Action, ChainState, Flow, Observable, Sampler
from .chain_driver import ChainProgressBar, Records, drive_chains
from .chains_checkpoint import SavedRecords, remove_segments, resume_chains, save_chains
from .errors import LatticeFlowsError, SpecError
from .flow_trainer import FlowTrainer, read_flow_checkpoint
from .run_builder import build_run, run_context, run_spec
from .run_settings import (
    DTYPES,
    FLOW_INIT_SEED_OFFSET,
    MEASUREMENT_SEED_OFFSET,
    SPEC_KEYS,
    TRAINING_SEED_OFFSET,
    RunSettings,
    run_device,
)
from .run_summary import summarize_run
from .run_table import records_table
from .spec import component_spec
from .training import TrainingError, TrainingSettings, check_flow_health, effective_sample_size, sample_flow

log = logging.getLogger(__name__)

__all__ = [
    "Simulation", "RunSettings", "RunInterrupted", "SPEC_KEYS", "TRAINING_SEED_OFFSET", "FLOW_INIT_SEED_OFFSET",
    "MEASUREMENT_SEED_OFFSET",
]


def _report_tuning(original: Sampler, tuned: Sampler) -> None:
    """Log the sampler's warning, if any, about its tuning during thermalization (rank 0 only)."""
    message = tuned.tuning_report(original)
    if message and distributed.is_main():
        log.warning("%s", message)


class RunInterrupted(LatticeFlowsError):
    """A run stopped on request (Ctrl-C) after ``done`` of ``total`` updates; its checkpoint is saved."""

    def __init__(self, done: int, total: int, checkpoint: Path | None):
        self.done, self.total, self.checkpoint = done, total, checkpoint
        where = f"; the chains are saved in {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"interrupted after {done} of {total} updates{where}")


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
    #: The flow's optimizer and training generator (:class:`~lattice_flows.flow_trainer.FlowTrainer`), made when first needed.
    _trainer: FlowTrainer | None = attrs.field(default=None, alias="_trainer")

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Simulation":
        """Build a simulation from a spec dict (see the README for its keys). Raises :class:`SpecError`."""
        parts = build_run(spec)
        return cls(**{f.name: getattr(parts, f.name) for f in attrs.fields(type(parts))})

    def to_spec(self) -> dict[str, Any]:
        """A spec dict, with every default written out, that builds an equal simulation."""
        return run_spec(
            lattice_shape=self.lattice_shape, action=self.action, sampler=self.sampler, observables=self.observables,
            settings=self.settings, flow=self.flow, training=self.training,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Simulation):
            return NotImplemented
        return self.to_spec() == other.to_spec()

    def evolve(self, **changes: Any) -> "Simulation":
        """A copy with run settings changed (``n_chains=64``), e.g. for sweeps.

        The copy shares the flow (its weights: training either one changes what both sample) and starts from
        copies of the optimizer state and the training generator's state as they are now: training either one
        afterwards moves neither the other's optimizer state nor its random stream.
        """
        trainer = self._trainer.copy() if self._trainer is not None else None
        return attrs.evolve(self, settings=attrs.evolve(self.settings, **changes), _trainer=trainer)

    # -- flows: sampling, training, checkpoints ----------------------------------------------

    def _require_flow(self, what: str) -> Flow:
        if self.flow is None:
            raise SpecError(f"spec: {what} needs a 'flow' section, and this spec has none")
        return self.flow

    def _flow_trainer(self, what: str) -> FlowTrainer:
        flow = self._require_flow(what)
        if self._trainer is None or self._trainer.flow is not flow:
            self._trainer = FlowTrainer(flow, seed=self.settings.seed, device=self.device)
        return self._trainer

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
        return self._flow_trainer("an optimizer").optimizer((self.training or TrainingSettings()).lr)

    def _training_generator(self) -> torch.Generator:
        return self._flow_trainer("a training generator").generator()

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
        trainer = self._flow_trainer("training")
        try:
            self.history = trainer.train(
                self.action,
                self.lattice_shape,
                self.training or TrainingSettings(),
                dtype=self.dtype,
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
        trainer = self._flow_trainer("a checkpoint")
        trainer.save(path, spec=self.to_spec(), history=self.history, lattice_shape=self.lattice_shape)

    @classmethod
    def load(cls, path, **overrides: Any) -> "Simulation":
        """A simulation from a checkpoint, with top-level spec keys replaced by ``overrides``.

        ``Simulation.load("flow.pt", lattice={"shape": [16, 16]})`` puts a flow trained on 8x8 on a
        16x16 lattice (the weights know no size; ``history.attrs["lattice_shape"]`` keeps the 8x8
        of the training); ``training={...}`` continues training from the loaded weights, optimizer
        state and history. A ``flow`` override that differs from the
        checkpoint's is an error naming what differs.
        """
        data, spec = read_flow_checkpoint(path, overrides)
        sim = cls.from_spec(spec)
        trainer = sim._flow_trainer("loading a checkpoint")
        history = trainer.restore(data, path, flow_spec=sim.to_spec()["flow"], lr=(sim.training or TrainingSettings()).lr)
        if history is not None:
            sim.history = history
        return sim

    @property
    def samples_through_flow(self) -> bool:
        """Whether the sampler moves through the flow (it has the flow injected: ``fthmc``, ``flow_imh``)."""
        return getattr(self.sampler, "flow", None) is not None

    def check_flow(self) -> dict[str, Any] | None:
        """When the sampler goes through the flow: its health on fresh samples of this lattice
        (:func:`~lattice_flows.training.check_flow_health`), raising
        :class:`~lattice_flows.training.FlowHealthError` if a weight, the loss or the ESS is not finite.
        Returns the report, or ``None`` when no flow is sampled through."""
        if self.flow is None or not self.samples_through_flow:
            return None
        return check_flow_health(
            self.flow, self.action, self.lattice_shape, dtype=self.dtype, device=self.device, seed=self.settings.seed,
            what=f"the flow ({component_spec('flows', self.flow)['name']})",
        )

    # -- running ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The spec's device; under several ranks ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
        return run_device(self.settings)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.settings.dtype]

    def generator(self) -> torch.Generator:
        """A fresh generator on the run's device, seeded with the spec's seed (rank ``r`` > 0: see
        :func:`lattice_flows.distributed.rank_seed`)."""
        return torch.Generator(device=self.device).manual_seed(distributed.rank_seed(self.settings.seed))

    def measurement_generator(self) -> torch.Generator:
        """A fresh generator for the stochastic observables (:attr:`Observable.stochastic`), on the run's device:
        seeded with ``seed + MEASUREMENT_SEED_OFFSET`` (:data:`~lattice_flows.run_settings.MEASUREMENT_SEED_OFFSET`),
        per rank as :meth:`generator` is, so measuring never draws from the sampler's stream."""
        seed = distributed.rank_seed(self.settings.seed + MEASUREMENT_SEED_OFFSET)
        return torch.Generator(device=self.device).manual_seed(seed)

    def local_chains(self) -> range:
        """The chain ids this process runs: all of them, or this rank's block under several ranks."""
        return distributed.chain_range(self.settings.n_chains)

    def initial_fields(self, generator: torch.Generator) -> torch.Tensor:
        """Starting fields for this process's chains, ``(len(local_chains()), *field_shape)``."""
        n, kw = len(self.local_chains()), {"dtype": self.dtype, "device": self.device}
        if self.settings.start == "cold":
            return self.action.cold_start(n, self.lattice_shape, **kw)
        return self.action.sample_prior(n, self.lattice_shape, generator=generator, **kw)

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every observable on the batch ``x``: ``{column: (B,)}``. The stochastic ones draw from ``generator``
        (default: a fresh :meth:`measurement_generator`), in the order of the columns."""
        if generator is None and any(obs.stochastic for obs in self.observables.values()):
            generator = self.measurement_generator()
        return {column: obs(x, generator) if obs.stochastic else obs(x) for column, obs in self.observables.items()}

    def _context(self) -> dict[str, Any]:
        return run_context(self.lattice_shape, self.action, self.flow)

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
        the generator's state, the measurement generator's (:meth:`measurement_generator`) and the sampler as
        tuned so far, rewritten at every save; the
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
        chains = self.local_chains()
        checkpoint = Path(checkpoint) if checkpoint is not None else None
        spec = self.to_spec()
        saved = SavedRecords()  # the measurements in the checkpoint's segment files
        records: Records = {}
        if checkpoint is not None and checkpoint.exists():
            resumed = resume_chains(checkpoint, spec, self.action, self._context(), self.device)
            generator, sampler, state, done = resumed.generator, resumed.sampler, resumed.state, resumed.done
            records, saved = resumed.records, resumed.saved
            measurements = resumed.measurement_generator or self.measurement_generator()
        else:
            if checkpoint is not None:
                remove_segments(checkpoint, first=0)  # a previous run's, never to be read again
            generator = self.generator()
            measurements = self.measurement_generator()
            sampler = self.sampler
            state = sampler.init(self._initial(initial, generator, chains), self.action)
            done = 0

        def save(sampler: Sampler, state: ChainState, done: int, records: Records) -> None:
            save_chains(checkpoint, spec, generator, sampler, state, done, records, saved, measurements)

        bar = ChainProgressBar(n_therm + n_traj, done, n_therm, progress if distributed.is_main() else False)
        try:
            chain_run = drive_chains(
                sampler, self.action, state, generator,
                n_thermalization=n_therm, n_trajectories=n_traj, measure=self.measure, measurement_generator=measurements,
                done=done, records=records,
                on_update=bar, on_thermalized=lambda tuned: _report_tuning(self.sampler, tuned),
                on_checkpoint=save if checkpoint is not None else None, checkpoint_every=checkpoint_every,
                should_stop=(lambda: distributed.any_rank(should_stop())) if should_stop is not None else None,
            )
        finally:
            bar.close()
        if chain_run.stopped:
            raise RunInterrupted(chain_run.done, chain_run.total, checkpoint)
        table = records_table(chain_run.records, chains, n_traj)
        if distributed.is_distributed():  # the one table of all chains, on every rank
            table = pd.concat(distributed.all_gather_objects(table), ignore_index=True)
        table.attrs["sampler"] = component_spec("samplers", chain_run.sampler)  # as tuned during thermalization
        table.attrs["spec"] = spec  # the whole resolved spec (lattice_flows.concat_runs reads it)
        return table

    def _initial(self, initial: torch.Tensor | None, generator: torch.Generator, chains: range) -> torch.Tensor:
        """This process's starting fields: ``initial`` (all chains' fields, checked) cut to ``chains``, or those
        of the ``start`` setting."""
        if initial is None:
            return self.initial_fields(generator)
        expected = (self.settings.n_chains, *self.action.field_shape(self.lattice_shape))
        if tuple(initial.shape) != expected:
            raise ValueError(
                f"run(initial=...): expected fields of shape {expected} (n_chains, *field_shape), got {tuple(initial.shape)}"
            )
        return initial[chains.start : chains.stop].to(device=self.device, dtype=self.dtype)

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
        return summarize_run(table, self.observables, tau_exp=tau_exp)

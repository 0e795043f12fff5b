"""The flow trainer of a run: the flow's optimizer and training generator, training, and flow checkpoints.

A :class:`FlowTrainer` belongs to one flow. It makes the Adam optimizer of the flow's parameters and
the training generator (seeded with the run's seed plus
:data:`~lattice_flows.run_settings.TRAINING_SEED_OFFSET`, per rank) when they are first needed, and
keeps them across :meth:`FlowTrainer.train` calls, so that training in several calls is training in
one. :meth:`FlowTrainer.save` writes a flow checkpoint (the spec, the weights, the optimizer and
training-RNG state, the history); :func:`read_flow_checkpoint` and :meth:`FlowTrainer.restore` read
one back. :meth:`FlowTrainer.copy` is a trainer of the same flow whose optimizer state and generator
start where this one's are and then go their own way.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from . import distributed
from .base import Action, Flow
from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .errors import SpecError
from .run_settings import SPEC_KEYS, TRAINING_SEED_OFFSET
from .spec import differing_keys, flow_section_with_defaults
from .training import TrainingSettings, train_flow

log = logging.getLogger(__name__)

__all__ = ["FlowTrainer", "read_flow_checkpoint"]


class FlowTrainer:
    """The training state of ``flow``: its Adam optimizer and the training generator on ``device``, whose
    seed is ``distributed.rank_seed(seed + TRAINING_SEED_OFFSET)`` (``seed``: the run's)."""

    def __init__(self, flow: Flow, *, seed: int, device: torch.device):
        self.flow = flow
        self.seed = seed
        self.device = torch.device(device)
        self._optimizer: torch.optim.Optimizer | None = None
        self._generator: torch.Generator | None = None

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """The Adam optimizer of the flow's parameters, made with learning rate ``lr`` on the first call and
        kept (a later ``lr`` changes nothing: the schedule of :func:`~lattice_flows.training.train_flow` sets it)."""
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.flow.parameters(), lr=lr)
        return self._optimizer

    def generator(self) -> torch.Generator:
        """The training generator, made on the first call and kept (it continues its stream across calls)."""
        if self._generator is None:
            seed = distributed.rank_seed(self.seed + TRAINING_SEED_OFFSET)
            self._generator = torch.Generator(device=self.device).manual_seed(seed)
        return self._generator

    def copy(self) -> "FlowTrainer":
        """A trainer of the same flow whose optimizer state and generator state are copies of this one's (made
        where this one has them): training with either moves neither the other's optimizer state nor its stream."""
        other = FlowTrainer(self.flow, seed=self.seed, device=self.device)
        if self._optimizer is not None:
            other._optimizer = torch.optim.Adam(self.flow.parameters(), lr=self._optimizer.param_groups[0]["lr"])
            other._optimizer.load_state_dict(copy.deepcopy(self._optimizer.state_dict()))
        if self._generator is not None:
            other._generator = torch.Generator(device=self.device)
            other._generator.set_state(self._generator.get_state())
        return other

    def train(
        self,
        action: Action,
        lattice_shape: Sequence[int],
        settings: TrainingSettings,
        *,
        dtype: torch.dtype,
        history: pd.DataFrame | None,
        progress: bool | None = None,
        pause_at_seconds: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> pd.DataFrame:
        """Train the flow on ``lattice_shape`` from ``history`` on (:func:`~lattice_flows.training.train_flow`);
        returns the whole history. A :class:`~lattice_flows.training.TrainingError` carries the history up to it."""
        return train_flow(
            self.flow,
            action,
            lattice_shape,
            settings,
            optimizer=self.optimizer(settings.lr),
            generator=self.generator(),
            dtype=dtype,
            device=self.device,
            history=history,
            progress=progress,
            pause_at_seconds=pause_at_seconds,
            should_stop=should_stop,
        )

    def save(self, path, *, spec: dict[str, Any], history: pd.DataFrame | None, lattice_shape: Sequence[int]) -> None:
        """Write the flow checkpoint ``path`` (atomically): ``spec``, the flow's weights, the optimizer state and
        every rank's training-RNG state (each ``None`` if not made yet), the ``history`` and the lattice it was
        trained on (``history.attrs["lattice_shape"]``, else ``lattice_shape``). Every rank calls it; rank 0 writes."""
        rng = self._generator.get_state() if self._generator is not None else None
        rngs = distributed.all_gather_objects(rng)
        if not distributed.is_main():
            return
        save_atomic(
            {
                "spec": spec,
                "flow": {k: v.detach().cpu() for k, v in self.flow.state_dict().items()},
                "optimizer": self._optimizer.state_dict() if self._optimizer is not None else None,
                # one state per rank, so that every rank of a resumed run continues its own stream
                "training_rng": None if rng is None else rngs,
                "history": None if history is None else history.to_dict("list"),
                # the lattice the history was trained on (Simulation.load puts it in history.attrs)
                "training_lattice": None if history is None else list(history.attrs.get("lattice_shape", lattice_shape)),
            },
            path,
        )

    def restore(self, data: Mapping[str, Any], path, *, flow_spec: dict[str, Any], lr: float) -> pd.DataFrame | None:
        """Load the flow checkpoint ``data`` (read from ``path`` by :func:`read_flow_checkpoint`) into this trainer's
        flow, whose spec section is ``flow_spec``: the weights, the optimizer state (the optimizer made with ``lr``
        first) and, on the CPU with as many ranks as wrote it, this rank's training-RNG state. Returns the history
        (``attrs["lattice_shape"]``: the lattice it was trained on), or ``None`` if the checkpoint has none. A flow
        that differs from the checkpoint's is a :class:`CheckpointError` naming what differs."""
        saved_flow = flow_section_with_defaults(data["spec"]["flow"], type(self.flow))
        if flow_spec != saved_flow:
            keys = differing_keys(saved_flow, flow_spec)
            diffs = "; ".join(f"{k}: checkpoint {saved_flow.get(k)!r}, spec {flow_spec.get(k)!r}" for k in keys)
            raise CheckpointError(f"{path}: the checkpoint's flow does not match the spec's ({diffs})")
        try:
            self.flow.load_state_dict(data["flow"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: the flow's weights do not fit the spec's flow: {exc}") from None
        if data.get("optimizer") is not None:
            self.optimizer(lr).load_state_dict(data["optimizer"])
        rngs = data.get("training_rng")
        if isinstance(rngs, torch.Tensor):  # written by a single process before per-rank states
            rngs = [rngs]
        if rngs is not None and self.device.type == "cpu":
            if len(rngs) == distributed.world_size():
                self.generator().set_state(rngs[distributed.rank()])
            else:
                log.warning(
                    "%s: training RNG states of %d ranks, but %d ranks now: training continues with fresh streams",
                    path, len(rngs), distributed.world_size(),
                )
        if data.get("history") is None:
            return None
        history = pd.DataFrame(data["history"])
        # the lattice the flow was trained on, which an override may change (figures, log lines)
        history.attrs["lattice_shape"] = list(data.get("training_lattice") or saved["lattice"]["shape"])
        return history


def read_flow_checkpoint(path, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flow checkpoint ``path`` and the spec to build from it: its spec with the top-level keys of
    ``overrides`` replaced (an unknown key is a :class:`SpecError`)."""
    data = load_checkpoint(path)
    for key in overrides:
        if key not in SPEC_KEYS:
            raise SpecError(f"Simulation.load: unknown spec key {key!r}; accepted: {', '.join(SPEC_KEYS)}")
    return data, {**data["spec"], **overrides}

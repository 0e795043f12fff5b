"""The chain driver: advance a batch of Markov chains through thermalization, then measurement.

:func:`drive_chains` is a plain function over a sampler, an action, a chain state and a generator:
during the first ``n_thermalization`` updates the sampler may tune itself (:meth:`Sampler.adapt`),
then every update's information and measurements are recorded. What happens around the updates goes
through callbacks: ``on_update`` (a progress bar: :class:`ChainProgressBar`), ``on_thermalized``,
``on_checkpoint`` and ``should_stop``. It knows no simulation, spec or file.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import torch

from .base import Action, ChainState, Sampler
from .progress import progress_bar
from .run_table import ACCEPTED, DELTA_H

__all__ = ["ChainRun", "Records", "drive_chains", "ChainProgressBar"]

#: The measurements so far: per column, one tensor ``(n_chains,)`` per measured update, in order.
Records = dict[str, list[torch.Tensor]]


@attrs.frozen(kw_only=True)
class ChainRun:
    """Where :func:`drive_chains` left the chains: the sampler as tuned, the state, the updates done (of the
    ``total``), the records, and whether ``should_stop`` ended it before the ``total``."""

    sampler: Sampler
    state: ChainState
    done: int
    total: int
    records: Records
    stopped: bool


@torch.no_grad()
def drive_chains(
    sampler: Sampler,
    action: Action,
    state: ChainState,
    generator: torch.Generator,
    *,
    n_thermalization: int,
    n_trajectories: int,
    measure: Callable[..., dict[str, torch.Tensor]],
    measurement_generator: torch.Generator | None = None,
    done: int = 0,
    records: Records | None = None,
    on_update: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    on_thermalized: Callable[[Sampler], None] | None = None,
    on_checkpoint: Callable[[Sampler, ChainState, int, Records], None] | None = None,
    checkpoint_every: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ChainRun:
    """Update the chains from update ``done`` to ``n_thermalization + n_trajectories``.

    ``state.x``: the fields of the chains, ``(B, *field_shape)``. Updates before ``n_thermalization``
    replace the sampler by ``sampler.adapt(info, update)`` and record nothing; each later one appends the
    sampler's ``info`` and ``measure(state.x)`` (``{column: (B,)}``) to ``records`` (given: a resumed run's,
    extended in place); with a ``measurement_generator``, ``measure(state.x, measurement_generator)``: the
    stream stochastic observables draw from, apart from the sampler's ``generator``, so that measuring does not
    change the chain. After every update: ``on_update(done, info)``; after the last thermalization update:
    ``on_thermalized(sampler)``, the sampler as tuned. ``on_checkpoint(sampler, state, done, records)`` is
    called every ``checkpoint_every`` updates before the end, when stopping, and at the end.
    ``should_stop()`` is asked after every update before the end; when true the run stops there
    (``stopped``). The sampler's random numbers all come from ``generator`` (the measurements' from
    ``measurement_generator``), so that the same arguments give the same chains and measurements, whether run at
    once or continued from a checkpoint.
    """
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"drive_chains(checkpoint_every=...): expected an integer >= 1 or None, got {checkpoint_every!r}")
    total = n_thermalization + n_trajectories
    records = {} if records is None else records
    stopped = False
    while done < total:
        state, info = sampler.step(state, action, generator)
        if done < n_thermalization:
            sampler = sampler.adapt(info, done)  # tuning (a step size, say) only while thermalizing
            if done + 1 == n_thermalization and on_thermalized is not None:
                on_thermalized(sampler)
        else:
            measured = measure(state.x) if measurement_generator is None else measure(state.x, measurement_generator)
            for key, value in {**info, **measured}.items():
                records.setdefault(key, []).append(value)
        done += 1
        if on_update is not None:
            on_update(done, info)
        if done < total and on_checkpoint is not None and checkpoint_every is not None and done % checkpoint_every == 0:
            on_checkpoint(sampler, state, done, records)
        if done < total and should_stop is not None and should_stop():
            stopped = True
            break
    if on_checkpoint is not None:
        on_checkpoint(sampler, state, done, records)
    return ChainRun(sampler=sampler, state=state, done=done, total=total, records=records, stopped=stopped)


class ChainProgressBar:
    """An ``on_update`` callback: a tqdm bar of the updates, with the running acceptance of the current phase
    (thermalization, then sampling) and the last update's mean ``delta_H``; nothing when not ``enabled``
    (``None``: only when standard error is a terminal). :meth:`close` it at the end."""

    def __init__(self, total: int, done: int, n_thermalization: int, enabled: bool | None):
        self.n_thermalization = n_thermalization
        self.bar: Any = progress_bar(total, done, enabled, desc="thermalizing" if done < n_thermalization else "sampling", unit="traj")
        self.accepted_sum, self.accepted_n = 0.0, 0

    def __call__(self, done: int, info: dict[str, torch.Tensor]) -> None:
        if self.bar is None:
            return
        if done == self.n_thermalization + 1 or done == 1:
            self.accepted_sum, self.accepted_n = 0.0, 0
        self.accepted_sum += info[ACCEPTED].float().sum().item()
        self.accepted_n += info[ACCEPTED].numel()
        self.bar.update(1)
        self.bar.set_description("thermalizing" if done < self.n_thermalization else "sampling", refresh=False)
        self.bar.set_postfix(
            acc=f"{self.accepted_sum / self.accepted_n:.3f}", dH=f"{info[DELTA_H].float().mean().item():.3g}", refresh=False
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

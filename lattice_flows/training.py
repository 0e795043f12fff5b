"""Reverse-KL training of a flow toward ``exp(-S)``, and the quantities that judge it.

With ``z ~ r`` (the theory's prior) and ``x = f(z)``, the model density is
``log q(x) = log r(z) - log|det J_f(z)|`` and the loss ``mean(log q(x) + S(x))`` estimates
``KL(q || p) - log Z`` (Kanwar et al. 2003.06413; Albergo et al. 2101.08176). The effective sample
size of the batch, ``ESS = (sum w)^2 / (N sum w^2)`` with ``log w = -S - log q``, is 1 for a perfect flow.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import attrs
import pandas as pd
import torch
from torch import Tensor

from . import distributed
from .base import Action, Flow
from .errors import LatticeFlowsError
from .params import choice, integer, real
from .progress import progress_bar

__all__ = ["TrainingSettings", "TrainingError", "sample_flow", "effective_sample_size", "train_flow", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ("step", "loss", "ess", "lr", "grad_norm", "seconds", "skipped")


class TrainingError(LatticeFlowsError, RuntimeError):
    """Training cannot go on (for example, too many non-finite steps in a row).

    ``history`` holds the rows up to the failure, so nothing measured is lost.
    """

    def __init__(self, message: str, history: pd.DataFrame | None = None):
        super().__init__(message)
        self.history = history


@attrs.frozen(kw_only=True)
class TrainingSettings:
    """The ``training`` section of a spec."""

    n_steps: int = integer(help="total optimizer steps (a resumed run continues up to this count)", default=1000, ge=1)
    batch_size: int = integer(help="configurations drawn per step", default=64, ge=1)
    lr: float = real(
        help="Adam learning rate (peak value with a schedule); at most 1: Adam moves every weight by about lr "
        "per step, and the flows' weights are of order 1, so a larger lr throws them away at the first step",
        default=1e-3,
        gt=0.0,
        le=1.0,
    )
    schedule: str = choice(
        ("constant", "cosine"),
        help="learning-rate schedule; 'cosine' decays to 0 over n_steps or max_seconds, whichever ends first",
        default="constant",
    )
    grad_clip: float = real(help="clip the gradient norm to this value; 0 turns clipping off", default=0.0, ge=0.0)
    max_seconds: float = real(
        help="stop once the training time (all sessions together) reaches this many seconds; 0 means no limit",
        default=0.0,
        ge=0.0,
    )
    max_bad_steps: int = integer(
        help="non-finite loss or gradient this many steps in a row stops training with an error", default=20, ge=1
    )
    force_penalty: float = real(
        help=(
            "add this times the mean squared latent force <|dS_f/dz|^2>/n_dof (S_f = S(f(z)) - log det J) to the "
            "loss, to train gentler forces for FTHMC; costs a double backward; 0 turns it off"
        ),
        default=0.0,
        ge=0.0,
    )

    def progress(self, step: int, seconds: float = 0.0) -> float:
        """Fraction of the training budget spent before step ``step`` (0-based) after ``seconds`` of
        training: the larger of ``step / n_steps`` and ``seconds / max_seconds`` (when a time limit is
        set), at most 1."""
        done = step / self.n_steps
        if self.max_seconds:
            done = max(done, seconds / self.max_seconds)
        return min(done, 1.0)

    def lr_at(self, step: int, seconds: float = 0.0) -> float:
        """Learning rate of step ``step`` (0-based) begun after ``seconds`` of training.

        With ``schedule = "cosine"`` and a ``max_seconds`` limit, the decay follows whichever budget
        runs out first, so a time-limited run ends at a small rate however fast the machine is (the
        rate then depends on the wall clock, and so does the trained flow).
        """
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * self.progress(step, seconds)))
        return self.lr


def sample_flow(
    flow: Flow,
    action: Action,
    lattice_shape: Sequence[int],
    n: int,
    *,
    generator: torch.Generator | Sequence[torch.Generator],
    dtype,
    device,
) -> tuple[Tensor, Tensor]:
    """``n`` fields ``x = f(z)``, ``z ~ r``, and ``log q(x)``: ``(n, *field_shape)`` and ``(n,)``.

    With a sequence of ``k`` generators, ``n`` priors are drawn from each and concatenated: ``k n`` fields.
    """
    z = draw_prior(action, lattice_shape, n, generator=generator, dtype=dtype, device=device)
    x, logdet = flow(z)
    return x, action.prior_log_prob(z) - logdet


def draw_prior(action: Action, lattice_shape: Sequence[int], n: int, *, generator, dtype, device) -> Tensor:
    """``n`` prior fields from each of the generator(s), concatenated: ``(k n, *field_shape)``."""
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    return torch.cat([action.sample_prior(n, lattice_shape, generator=g, dtype=dtype, device=device) for g in generators])


def latent_force_penalty(flow, action: Action, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, log_q, penalty)`` for prior fields ``z``: the flow's output, its log-density, and
    ``mean_b |dS_f/dz|^2 / n_dof`` with ``S_f(z) = S(f(z)) - log|det J_f(z)|``, differentiable in the
    weights (the gradient in ``z`` is taken with ``create_graph``)."""
    z = z.detach().requires_grad_(True)
    x, logdet = flow(z)
    latent = action(x) - logdet
    (force,) = torch.autograd.grad(latent.sum(), z, create_graph=True)
    return x, action.prior_log_prob(z) - logdet, force.square().flatten(1).mean(1).mean()


def effective_sample_size(log_w: Tensor) -> Tensor:
    """``(sum w)^2 / (N sum w^2)`` in ``(0, 1]`` from log-weights ``(N,)``, computed in log space.

    Equal weights give 1; one weight dominating gives ``1/N``:

    >>> float(effective_sample_size(torch.zeros(8)))
    1.0
    >>> round(float(effective_sample_size(torch.tensor([0.0, -50.0, -50.0, -50.0]))), 6)
    0.25
    """
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.shape[0]


def train_flow(
    flow: Flow,
    action: Action,
    lattice_shape: Sequence[int],
    settings: TrainingSettings,
    *,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | Sequence[torch.Generator],
    dtype: torch.dtype,
    device: torch.device,
    history: pd.DataFrame | None = None,
    progress: bool | None = None,
    pause_at_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """Train ``flow`` in place from ``len(history)`` up to ``settings.n_steps`` steps (or until the
    cumulative training time reaches ``settings.max_seconds``); returns the full history.

    One row per step (:data:`HISTORY_COLUMNS`): ``loss`` and ``ess`` of the step's batch, ``lr``,
    ``grad_norm`` (before clipping), cumulative wall-clock ``seconds`` and whether the step was
    ``skipped``. A step whose loss or gradient is not finite changes nothing and is recorded as
    skipped; ``settings.max_bad_steps`` of them in a row raise :class:`TrainingError`. The step's
    numbers reach the host once per step, for the history row. ``pause_at_seconds`` also stops at
    that cumulative time, without entering the learning-rate schedule (which follows ``settings``).
    ``should_stop()``, asked after every step, ends training early when true (Ctrl-C in the CLI).

    Batches: ``settings.batch_size`` prior draws from ``generator`` (from each, for a sequence).
    Under ``torch.distributed`` (:mod:`lattice_flows.distributed`) the flow is wrapped in
    ``DistributedDataParallel``: each rank draws its own batch from its own generator, the gradients
    are averaged over the ranks (the gradient of the mean loss over the global batch), and the
    ``loss`` and ``ess`` recorded are those of the global batch, the same on every rank. A run of
    ``k`` ranks with batch ``b`` thus follows a single process given the ``k`` ranks' generators.
    """
    rows = [] if history is None else history.to_dict("records")
    start_step = len(rows)
    elapsed = float(rows[-1]["seconds"]) if rows else 0.0
    params = [p for p in flow.parameters() if p.requires_grad]
    clip = settings.grad_clip if settings.grad_clip > 0 else math.inf
    bad_in_a_row = 0
    bar = progress_bar(settings.n_steps, start_step, progress if distributed.is_main() else False, desc="training", unit="step")
    model = flow
    if distributed.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        # broadcasts rank 0's weights now, averages the gradients in backward()
        model = DistributedDataParallel(flow, device_ids=[device.index] if device.type == "cuda" else None)
    flow.train()
    try:
        for step in range(start_step, settings.n_steps):
            if settings.max_seconds and elapsed >= settings.max_seconds:
                break
            if pause_at_seconds is not None and elapsed >= pause_at_seconds:
                break
            t0 = time.perf_counter()
            lr = settings.lr_at(step, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            if settings.force_penalty:
                z = draw_prior(action, lattice_shape, settings.batch_size, generator=generator, dtype=dtype, device=device)
                x, log_q, penalty = latent_force_penalty(model, action, z)
            else:
                x, log_q = sample_flow(
                    model, action, lattice_shape, settings.batch_size, generator=generator, dtype=dtype, device=device
                )
                penalty = 0.0
            s = action(x)
            loss = (log_q + s).mean()  # the reverse KL up to log Z: what the history records
            (loss + settings.force_penalty * penalty).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            with torch.no_grad():
                ess = effective_sample_size(distributed.all_gather_tensor(-(s + log_q).detach()))
                global_loss = distributed.mean_over_ranks(loss.detach())
                loss_v, ess_v, grad_v = torch.stack([global_loss, ess, grad_norm.to(loss.dtype)]).tolist()
            finite = math.isfinite(loss_v) and math.isfinite(grad_v)
            if finite:
                optimizer.step()
                bad_in_a_row = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                bad_in_a_row += 1
            # the ranks' mean step time, so that the time budget and schedule agree on every rank
            elapsed += float(distributed.mean_over_ranks(torch.tensor(time.perf_counter() - t0, dtype=torch.float64)))
            rows.append(
                {"step": step, "loss": loss_v, "ess": ess_v, "lr": lr, "grad_norm": grad_v, "seconds": elapsed, "skipped": not finite}
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.4g}", ess=f"{ess_v:.3f}", refresh=False)
            if bad_in_a_row >= settings.max_bad_steps:
                raise TrainingError(
                    f"{bad_in_a_row} training steps in a row had a non-finite loss or gradient "
                    f"(last: loss {loss_v}, gradient norm {grad_v}) at step {step}; lower training.lr, "
                    "set training.grad_clip, or check the action and flow",
                    history=pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)),
                )
            if should_stop is not None and distributed.any_rank(should_stop()):
                break
    finally:
        if bar is not None:
            bar.close()
        flow.eval()
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))

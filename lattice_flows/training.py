"""Reverse-KL training of a flow toward ``exp(-S)``, and the quantities that judge it.

With ``z ~ r`` (the theory's prior) and ``x = f(z)``, the model density is
``log q(x) = log r(z) - log|det J_f(z)|`` and the loss ``mean(log q(x) + S(x))`` estimates
``KL(q || p) - log Z`` (Kanwar et al. 2003.06413; Albergo et al. 2101.08176). The effective sample
size of the batch, ``ESS = (sum w)^2 / (N sum w^2)`` with ``log w = -S - log q``, is 1 for a perfect flow.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import attrs
import pandas as pd
import torch
from torch import Tensor

from . import distributed
from .base import Action, Flow
from .errors import LatticeFlowsError
from .params import choice, integer, real
from .progress import progress_bar

__all__ = [
    "smoothed_history",
    "smoothing_window",
    "Smoothed",
    "TrainingSettings",
    "TrainingError",
    "FlowHealthError",
    "sample_flow",
    "effective_sample_size",
    "flow_health",
    "check_flow_health",
    "train_flow",
    "HISTORY_COLUMNS",
]

HISTORY_COLUMNS = ("step", "loss", "ess", "lr", "grad_norm", "seconds", "skipped")


class TrainingError(LatticeFlowsError, RuntimeError):
    """Training cannot go on (for example, too many non-finite steps in a row).

    ``history`` holds the rows up to the failure, so nothing measured is lost.
    """

    def __init__(self, message: str, history: pd.DataFrame | None = None):
        super().__init__(message)
        self.history = history


class FlowHealthError(TrainingError):
    """A flow that cannot be sampled through: a weight, or the loss or ESS on fresh samples, is not finite.

    ``health`` is the :func:`flow_health` report that failed; ``history`` as in :class:`TrainingError`.
    """

    def __init__(self, message: str, health: dict, history: pd.DataFrame | None = None):
        super().__init__(message, history)
        self.health = health


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


#: Fresh samples :func:`flow_health` draws by default: enough for a finite loss and ESS to mean something,
#: few enough to cost about one training step.
HEALTH_SAMPLES = 64


@torch.no_grad()
def flow_health(
    flow: Flow,
    action: Action,
    lattice_shape: Sequence[int],
    *,
    n: int = HEALTH_SAMPLES,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
) -> dict[str, Any]:
    """The flow's reverse-KL ``loss`` ``mean(log q + S)`` and ``ess`` on ``n`` fresh samples on
    ``lattice_shape``, and the names of its ``non_finite`` weights (parameters and buffers).

    The prior fields come from a generator of their own seeded with ``seed``, so the check draws
    nothing from the training or sampling streams (a run's table does not depend on it). A flow that
    raises on the batch, or whose output has a non-finite entry, reports ``loss = ess = nan`` and the
    reason in ``error``. ``healthy`` is whether everything is finite.

    >>> import torch
    >>> from lattice_flows.registry import ACTIONS, FLOWS
    >>> action = ACTIONS.get("u1_wilson")(beta=1.0)
    >>> flow = FLOWS.get("u1_plaquette_poisson")(FLOWS.get("u1_plaquette_poisson").Config(n_bins=4), (4, 4)).double()
    >>> flow_health(flow, action, (4, 4), n=8, dtype=torch.float64, device="cpu")["healthy"]
    True
    >>> with torch.no_grad():
    ...     flow.spline.log_slopes[0] = float("nan")
    >>> report = flow_health(flow, action, (4, 4), n=8, dtype=torch.float64, device="cpu")
    >>> report["healthy"], report["non_finite"], report["loss"]
    (False, ['spline.log_slopes'], nan)
    """
    non_finite = [
        name
        for name, t in [*flow.named_parameters(), *flow.named_buffers()]
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    generator = torch.Generator(device=device).manual_seed(seed)
    error = None
    loss = ess = math.nan
    was_training = flow.training
    flow.eval()
    try:
        x, log_q = sample_flow(flow, action, lattice_shape, n, generator=generator, dtype=dtype, device=device)
        if not bool(torch.isfinite(x).all()):
            error = f"the flow's output has {int((~torch.isfinite(x)).sum())} non-finite entries"
        else:
            s = action(x)
            loss = float((log_q + s).mean())
            ess = float(effective_sample_size(-(s + log_q)))
    except (RuntimeError, ValueError, ArithmeticError) as exc:  # a flow's own failure (an inverse that diverges, say)
        error = f"the flow failed on fresh samples ({type(exc).__name__}: {' '.join(str(exc).split())})"
    finally:
        flow.train(was_training)
    healthy = not non_finite and error is None and math.isfinite(loss) and math.isfinite(ess)
    return {"healthy": healthy, "loss": loss, "ess": ess, "n": n, "non_finite": non_finite, "error": error}


def check_flow_health(
    flow: Flow,
    action: Action,
    lattice_shape: Sequence[int],
    *,
    what: str = "the flow",
    history: pd.DataFrame | None = None,
    **health: Any,
) -> dict[str, Any]:
    """:func:`flow_health` (``health``: its keywords ``n``, ``dtype``, ``device``, ``seed``), raising
    :class:`FlowHealthError` (naming the loss, the ESS and any non-finite weights) unless everything is
    finite; returns the report. ``what`` opens the message.

    Under several ranks the ranks agree: if one finds the flow broken, every rank raises.
    """
    report = flow_health(flow, action, lattice_shape, **health)
    if distributed.any_rank(not report["healthy"]):
        shape = "x".join(map(str, lattice_shape))
        parts = [f"on {report['n']} fresh samples on {shape} its loss is {report['loss']:.6g} and its ESS {report['ess']:.6g}"]
        if report["non_finite"]:
            names = report["non_finite"]
            parts.append(
                f"{len(names)} weight tensor{'s are' if len(names) > 1 else ' is'} not finite "
                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            )
        if report["error"]:
            parts.append(report["error"])
        if report["healthy"]:
            parts.append("another process found it broken")
        raise FlowHealthError(
            f"{what} is broken and cannot be sampled through: {'; '.join(parts)}. Train it again with a lower "
            "training.lr or a training.grad_clip (the history shows where the loss stopped being finite)",
            report,
            history,
        )
    return report


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

    When the budget is spent (``n_steps`` or ``max_seconds``: the training is complete), the flow must
    pass :func:`check_flow_health` on fresh samples; a broken flow (a loss or ESS that is not finite,
    a non-finite weight) raises :class:`FlowHealthError` with the history, so a run of fewer bad
    steps than ``max_bad_steps`` is never taken for a trained flow.
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
                try:
                    optimizer.step()
                except RuntimeError as exc:  # e.g. a step size lr / (1 - beta_1^t) beyond the dtype's range
                    rows.append(
                        {"step": step, "loss": loss_v, "ess": ess_v, "lr": lr, "grad_norm": grad_v, "seconds": elapsed, "skipped": True}
                    )
                    raise TrainingError(
                        f"the optimizer step failed at step {step} ({' '.join(str(exc).split())}) with learning rate "
                        f"{lr:g} in {str(dtype).removeprefix('torch.')}; lower training.lr",
                        history=pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)),
                    ) from None
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
    history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    if rows and settings.progress(int(rows[-1]["step"]) + 1, elapsed) >= 1.0:
        check_flow_health(
            flow, action, lattice_shape, dtype=dtype, device=device, what=f"the flow after {len(rows)} training steps",
            history=history,
        )
    return history


# -- the end-of-training figures that the log and training.png quote ---------------------------


def smoothing_window(n_steps: int) -> int:
    """Steps averaged by :func:`smoothed_history` for a history of ``n_steps`` rows: the last 5%,
    at least 10 (all of them for a shorter history).

    >>> [smoothing_window(n) for n in (0, 3, 100, 1000, 20000)]
    [0, 3, 10, 50, 1000]
    """
    return min(n_steps, max(10, n_steps // 20))


@attrs.frozen
class Smoothed:
    """A smoothed training figure: ``value`` is the mean of the finite values of the last
    ``n_steps`` history rows (NaN when none is finite); ``label`` says so in words."""

    value: float
    n_steps: int

    @property
    def label(self) -> str:
        return f"mean of the last {self.n_steps} step{'s' if self.n_steps != 1 else ''}"


def smoothed_history(history: pd.DataFrame, column: str, window: int | None = None) -> Smoothed:
    """The end-of-training value of ``column`` (``"ess"``, ``"loss"``) of a training history
    (:func:`train_flow`), smoothed: the mean over the last ``window`` rows (default
    :func:`smoothing_window`), non-finite (skipped) values left out.

    A single step's ESS is the ESS of one batch, noisy and biased by its heavy-tailed weights; the
    CLI's closing log line and ``training.png`` both quote this figure, with :attr:`Smoothed.label`.

    >>> h = pd.DataFrame({"ess": [0.1, 0.2, float("nan"), 0.4]})
    >>> s = smoothed_history(h, "ess", window=3)
    >>> round(s.value, 6), s.n_steps, s.label
    (0.3, 3, 'mean of the last 3 steps')

    Raises:
        KeyError: If the history has no column ``column``.
        ValueError: If ``window`` is not a positive integer.
    """
    if column not in history.columns:
        raise KeyError(f"the training history has no column {column!r}; it has {', '.join(map(str, history.columns))}")
    n = len(history)
    if window is None:
        window = smoothing_window(n)
    elif isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected a positive integer, got {window!r}")
    window = min(window, n)
    tail = pd.to_numeric(history[column].iloc[n - window :], errors="coerce").astype(float).tolist()
    finite = [v for v in tail if math.isfinite(v)]
    return Smoothed(value=math.fsum(finite) / len(finite) if finite else math.nan, n_steps=window)

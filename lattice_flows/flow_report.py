"""How a run reports its flow: the end-of-training figures and the flow's ESS on the sampled lattice.

A flow trained on one lattice samples any other (the weights know no size), but its quality does not
carry over: a flow with ESS 0.6 on 8x8 may have 0.05 on 16x16. So ``lattice-flows sample`` and
``run`` measure the flow's ESS on the lattice they sample, from fresh samples
(:meth:`Simulation.flow_quality`), and log it before sampling beside the training's figure::

    lattice-flows: flow on 16x16: ESS 0.020 on 1024 fresh samples (trained on 8x8: ESS 0.308, mean of the last 14 steps of training)

The training's figure is :func:`lattice_flows.training.smoothed_history`, the same number that the
closing log line of training and ``figures/training.png`` quote.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from .simulation import Simulation
from .training import smoothed_history

__all__ = ["FLOW_ESS_SAMPLES", "ess_text", "training_line", "flow_quality_on_lattice", "figure_context", "lattice_text"]

#: Fresh flow samples whose ESS ``sample`` and ``run`` log (and write to ``status.json``) before sampling.
FLOW_ESS_SAMPLES = 1024


def lattice_text(shape) -> str:
    """``(16, 16)`` -> ``"16x16"``."""
    return "x".join(str(int(v)) for v in shape)


def ess_text(ess: float) -> str:
    """An ESS in (0, 1] for the reader: three decimals (``0.020``), two digits below 0.01 (``0.0031``)."""
    return f"{ess:.3f}" if not math.isfinite(ess) or ess >= 0.01 else f"{ess:.2g}"


def training_line(history: pd.DataFrame) -> str:
    """The closing log line of training: steps, seconds, and the loss and ESS smoothed as
    ``training.png`` shows them, e.g. ``"286 steps, 60 s; loss -159.2, ESS 0.308 (mean of the last
    14 steps)"``."""
    n = len(history)
    seconds = float(history["seconds"].iloc[-1]) if n and "seconds" in history.columns else 0.0
    parts = [f"{n} step{'s' if n != 1 else ''}, {seconds:.0f} s"]
    if n and "loss" in history.columns and "ess" in history.columns:
        loss, ess = smoothed_history(history, "loss"), smoothed_history(history, "ess")
        parts.append(f"loss {loss.value:.5g}, ESS {ess_text(ess.value)} ({ess.label})")
    return "; ".join(parts)


def flow_quality_on_lattice(sim: Simulation, n: int = FLOW_ESS_SAMPLES) -> tuple[str, dict[str, Any]]:
    """The flow's ESS on ``sim``'s lattice from ``n`` fresh samples, as a log line and as the
    ``status.json`` entries ``flow_ess`` (None when not finite), ``flow_ess_samples``,
    ``flow_lattice`` and ``flow_trained_on`` (the training lattice: ``sim.history.attrs
    ["lattice_shape"]``, which :meth:`Simulation.load` sets, else ``sim``'s own; None without a
    training history). The samples come from a fresh generator (:meth:`Simulation.flow_quality`),
    so the run's random stream, and its table, are the same as without this measurement."""
    ess = sim.flow_quality(n)["ess"]
    history = sim.history
    trained_on = None
    note = "no training history"
    if history is not None and len(history) and "ess" in history.columns:
        trained_on = [int(v) for v in history.attrs.get("lattice_shape", sim.lattice_shape)]
        end = smoothed_history(history, "ess")
        note = f"trained on {lattice_text(trained_on)}: ESS {ess_text(end.value)}, {end.label} of training"
    message = f"flow on {lattice_text(sim.lattice_shape)}: ESS {ess_text(ess)} on {n} fresh samples ({note})"
    status = {
        "flow_ess": ess if math.isfinite(ess) else None,
        "flow_ess_samples": n,
        "flow_lattice": [int(v) for v in sim.lattice_shape],
        "flow_trained_on": trained_on,
    }
    return message, status


def figure_context(sim: Simulation, status: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`lattice_flows.figures.write_figures` for ``sim``'s run: the
    lattice sampled and, from the run folder's ``status`` (:meth:`RunFolder.status`), the flow's ESS
    on it when it was measured on that lattice (:func:`flow_quality_on_lattice`)."""
    context: dict[str, Any] = {"lattice_shape": [int(v) for v in sim.lattice_shape]}
    if status.get("flow_ess") is not None and list(status.get("flow_lattice") or []) == context["lattice_shape"]:
        context["flow_ess"] = {"ess": float(status["flow_ess"]), "n_samples": int(status.get("flow_ess_samples") or 0)}
    return context

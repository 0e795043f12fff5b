"""Samplers of one target side by side: the same start, each tuned, then a table of what they cost.

``lattice-flows compare A B C ...`` (and :func:`compare`): each argument is a spec file or a flow checkpoint
(a run folder's ``flow.pt``, or the run folder itself), all on the same action, lattice and dtype. The
steps, for any theory (nothing here knows one; plugins say what is what through class flags):

1. **The start**, the same fields ``(n_chains, *field_shape)`` for every sampler: drawn from a registered
   sampler with :attr:`Sampler.exact_independent` that :meth:`Sampler.applies_to` the action (2D U(1)
   Wilson: ``u1_exact``), else ``equilibrate`` updates (step tuned as its spec says) of the first
   contestant whose sampler goes through no flow (HMC, say), or of the first contestant when all do, from
   its spec's ``start``. The output says which (:attr:`Start.note`).
2. **Each sampler** runs its spec's ``n_thermalization`` updates from that start, tuning its step
   (``target_acceptance``), then ``n_trajectories`` with the step fixed (:meth:`Simulation.run`). The
   measured phase alone is timed: wall seconds and CPU seconds of this process.
3. **The table** (:func:`comparison_row`, one row per contestant): acceptance, ``<exp(-delta_H)>``, every
   summary row of an observable with its exact value and pull, ``tau_int`` of the slow observable
   (:attr:`Observable.slow_mode`; else the observable with the largest ``tau_int``) with its error and
   whether the summary trusts it. An untrusted ``tau_int`` (window not closed, chains shorter than 10
   ``tau_int``, a drift) is a LOWER BOUND, and so is every cost built on it (``bound`` True, shown ``>=``);
   an observable that never changed in any chain gets ``tau_int >= n_trajectories``. Costs per chain and
   update: seconds per trajectory (wall, CPU), seconds per independent sample ``2 tau_int x s/traj``, the
   same plus the flow's training seconds (from its history) spread over ``amortize`` samples, and the
   ratio of each to the first contestant's, with its direction when either ``tau_int`` is a bound
   (:func:`ratio_text`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import attrs
import pandas as pd
import torch

from .analysis import EXP_DELTA_H
from .chain_driver import drive_chains
from .checkpoint import load_checkpoint, write_atomic
from .errors import LatticeFlowsError
from .figures import write_figures
from .flow_report import lattice_text
from .registry import SAMPLERS
from .run_summary import moment_label
from .run_table import CHAIN, TRAJECTORY
from .simulation import Simulation
from .specfile import apply_overrides, load_spec

__all__ = [
    "CompareError", "Contestant", "Start", "Measured", "Comparison", "load_contestant", "check_same_target",
    "common_start", "timed_run", "slow_observable", "comparison_row", "ratio_text", "format_comparison",
    "history_figure", "compare", "DEFAULT_AMORTIZE", "START_SEED_OFFSET",
]

#: Samples over which a flow's training seconds are amortized by default (issue 16: 10^5 trajectories).
DEFAULT_AMORTIZE = 100_000
#: The start's generator is seeded with the first contestant's seed plus this (apart from every run's stream).
START_SEED_OFFSET = 7_000_007


class CompareError(LatticeFlowsError, ValueError):
    """A comparison that cannot run as asked (contestants on different targets, a bad option)."""


@attrs.frozen(kw_only=True)
class Contestant:
    """One sampler of the comparison: ``label`` names its row, ``source`` where it came from."""

    label: str
    source: str
    simulation: Simulation


@attrs.frozen(kw_only=True)
class Start:
    """The common start: ``fields`` ``(n_chains, *field_shape)``, what they are (``note``), and the seconds spent."""

    fields: torch.Tensor
    note: str
    seconds: float


@attrs.frozen(kw_only=True)
class Measured:
    """One contestant's run: its table and summary, wall and CPU seconds of the measured updates (after tuning),
    and the wall seconds of the whole run (tuning included)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    wall: float
    cpu: float
    total: float


@attrs.frozen(kw_only=True)
class Comparison:
    """What :func:`compare` gives: the table (one row per contestant), the printed text, the start, the runs."""

    frame: pd.DataFrame
    text: str
    start: Start
    runs: dict[str, Measured]


# -- contestants -------------------------------------------------------------------------------------


def load_contestant(source: str | Path, overrides: Sequence[str] = (), *, settings: dict[str, Any] | None = None) -> Contestant:
    """A contestant from a spec file (``.toml``, ``.yaml``, ``.json``), a flow checkpoint (``.pt``) or a run
    folder (its ``flow.pt``, else its ``spec.json``), with ``--set`` ``overrides`` and then the top-level
    ``settings`` (``{"n_chains": 4}``) applied. Label: the sampler's name and the file's stem."""
    path = Path(source)
    if path.is_dir():
        path = path / "flow.pt" if (path / "flow.pt").exists() else path / "spec.json"
        if not path.exists():
            raise CompareError(f"compare {source}: a folder without flow.pt or spec.json; expected a run folder, a spec file or a flow checkpoint")
    elif not path.exists():
        raise CompareError(f"compare {source}: no such file; expected a spec file (.toml, .yaml, .json), a flow checkpoint (.pt) or a run folder")
    if path.suffix == ".pt":
        saved = load_checkpoint(path)["spec"]
        spec = {**apply_overrides(saved, overrides), **(settings or {})}
        sim = Simulation.load(path, **{k: v for k, v in spec.items() if saved.get(k) != v})
    else:
        sim = Simulation.from_spec({**apply_overrides(load_spec(path), overrides), **(settings or {})})
    stem = path.parent.name if path.name in ("flow.pt", "spec.json") else path.stem
    return Contestant(label=f"{sim.to_spec()['sampler']['name']} ({stem})", source=str(source), simulation=sim)


def _unique_labels(contestants: Sequence[Contestant]) -> list[Contestant]:
    seen: dict[str, int] = {}
    out = []
    for c in contestants:
        seen[c.label] = seen.get(c.label, 0) + 1
        out.append(c if seen[c.label] == 1 else attrs.evolve(c, label=f"{c.label} #{seen[c.label]}"))
    return out


def check_same_target(contestants: Sequence[Contestant]) -> None:
    """Raise :class:`CompareError` naming the first difference of action, lattice, dtype or number of chains
    between the first contestant and another (nothing has run then)."""
    if not contestants:
        raise CompareError("compare: expected at least one spec file or flow checkpoint, got none")
    first = contestants[0]
    ref = first.simulation.to_spec()
    for other in contestants[1:]:
        spec = other.simulation.to_spec()
        for key, what in (("action", "action"), ("lattice", "lattice"), ("dtype", "dtype"), ("n_chains", "number of chains")):
            if spec[key] != ref[key]:
                raise CompareError(
                    f"compare: {other.source} has {what} {spec[key]!r}, but {first.source} has {ref[key]!r}; "
                    "every sampler must sample the same action on the same lattice in the same dtype"
                    + (" (give them --chains N)" if key == "n_chains" else "")
                )


# -- the start ---------------------------------------------------------------------------------------


def exact_sampler_name(sim: Simulation) -> str | None:
    """The first registered sampler (by name) that is :attr:`~lattice_flows.Sampler.exact_independent` and applies
    to ``sim``'s action, or None."""
    for name, entry in SAMPLERS.entries().items():
        if getattr(entry.cls, "exact_independent", False) and entry.cls.applies_to(sim.action):
            return name
    return None


def _plain_spec(sim: Simulation, **changes: Any) -> dict[str, Any]:
    spec = {k: v for k, v in sim.to_spec().items() if k not in ("flow", "training")}
    return {**spec, "observables": [], **changes}


def common_start(contestants: Sequence[Contestant], *, equilibrate: int) -> Start:
    """The fields every contestant starts from (see the module's docstring), on the first one's device and dtype."""
    first = contestants[0].simulation
    seed = first.settings.seed + START_SEED_OFFSET
    t0 = time.perf_counter()
    exact = exact_sampler_name(first)
    if exact is not None:
        sim = Simulation.from_spec(_plain_spec(first, sampler={"name": exact}, seed=seed, n_thermalization=0, n_trajectories=1))
        g = sim.generator()
        state, _ = sim.sampler.step(sim.sampler.init(sim.initial_fields(g), sim.action), sim.action, g)
        return Start(fields=state.x, note=f"exact sampler {exact} (independent equilibrium configurations)",
                     seconds=time.perf_counter() - t0)
    plain = [c for c in contestants if not c.simulation.samples_through_flow]
    chosen = (plain or list(contestants))[0]
    sim = chosen.simulation
    g = torch.Generator(device=sim.device).manual_seed(seed)
    run = drive_chains(sim.sampler, sim.action, sim.sampler.init(sim.initial_fields(g), sim.action), g,
                       n_thermalization=equilibrate, n_trajectories=0, measure=sim.measure)
    why = "no exact sampler for this action" + ("" if plain else "; every sampler goes through a flow")
    note = f"{equilibrate} trajectories of {chosen.label} from its {sim.settings.start} start (step tuned), {why}"
    return Start(fields=run.state.x, note=note, seconds=time.perf_counter() - t0)


# -- running and the table ---------------------------------------------------------------------------


def timed_run(sim: Simulation, start: torch.Tensor, *, progress: bool | None = False) -> Measured:
    """``sim.run(initial=start)``, its summary, and the wall and CPU seconds of the measured updates alone."""
    n_therm = sim.settings.n_thermalization
    stamps: list[tuple[float, float]] = []

    def clock() -> bool:  # asked after every update but the last: a clock, never a stop
        stamps.append((time.perf_counter(), time.process_time()))
        return False

    t0 = (time.perf_counter(), time.process_time())
    table = sim.run(initial=start, progress=progress, should_stop=clock)
    end = (time.perf_counter(), time.process_time())
    begin = stamps[n_therm - 1] if n_therm > 0 else t0
    return Measured(table=table, summary=sim.summary(table), wall=end[0] - begin[0], cpu=end[1] - begin[1], total=end[0] - t0[0])


def slow_observable(sim: Simulation, summary: pd.DataFrame) -> str | None:
    """The column whose ``tau_int`` sets the cost: the first with :attr:`Observable.slow_mode`, else the observable
    with the largest finite ``tau_int`` in ``summary`` (None without observables)."""
    for column, obs in sim.observables.items():
        if getattr(obs, "slow_mode", False) and column in summary.index:
            return column
    taus = summary["tau_int"].reindex([c for c in sim.observables if c in summary.index]).astype(float)
    taus = taus[taus.notna()]
    return str(taus.idxmax()) if len(taus) else next((c for c in sim.observables if c in summary.index), None)


def _training_seconds(sim: Simulation) -> float:
    """The flow's training seconds, from its history, when the sampler goes through the flow; else 0."""
    if not sim.samples_through_flow or sim.history is None or not len(sim.history):
        return 0.0
    return float(sim.history["seconds"].iloc[-1])


def comparison_row(contestant: Contestant, measured: Measured, *, amortize: int) -> dict[str, Any]:
    """The contestant's row of the comparison (see the module's docstring for what each column is)."""
    sim, summary, table = contestant.simulation, measured.summary, measured.table
    n = sim.settings.n_trajectories * sim.settings.n_chains  # measured updates, all chains
    row: dict[str, Any] = {"sampler": contestant.label, "source": contestant.source}
    integrator = table.attrs.get("sampler", {}).get("integrator", {})
    row["step_size"], row["n_steps"] = integrator.get("step_size", math.nan), integrator.get("n_steps", math.nan)
    row["acceptance"] = float(summary.loc["accepted", "mean"])
    row["exp(-dH)"], row["exp(-dH) err"] = float(summary.loc[EXP_DELTA_H, "mean"]), float(summary.loc[EXP_DELTA_H, "error"])
    for column, obs in sim.observables.items():
        for power in obs.moments:
            label = moment_label(column, power)
            if label in summary.index:
                r = summary.loc[label]
                row.update({label: float(r["mean"]), f"{label} err": float(r["error"]),
                            f"{label} exact": float(r["exact"]), f"{label} pull": float(r["pull"])})
    slow = slow_observable(sim, summary)
    row["slow"] = slow
    tau, dtau, reliable, note = math.nan, math.nan, False, "no observable"
    if slow is not None:
        tau, dtau = float(summary.loc[slow, "tau_int"]), float(summary.loc[slow, "tau_int_error"])
        reliable, note = bool(summary.loc[slow, "reliable"]), str(summary.loc[slow, "note"])
        if bool(table.groupby(CHAIN)[slow].nunique().max() <= 1):
            n_traj = sim.settings.n_trajectories
            tau, dtau, reliable = float(n_traj), math.nan, False
            note = f"{slow} never changed in any chain in {n_traj} trajectories"
    row.update({"tau_int": tau, "tau_int err": dtau, "bound": not reliable, "note": "" if reliable else note})
    training = _training_seconds(sim)
    for prefix, seconds in (("", measured.wall), ("cpu ", measured.cpu)):
        per_traj = seconds / n
        row[f"{prefix}s/traj"] = per_traj
        row[f"{prefix}s/indep"] = 2 * tau * per_traj
        row[f"{prefix}s/indep+training"] = 2 * tau * per_traj + training / amortize
    row["training s"], row["amortize"] = training, amortize
    row["seconds"] = measured.total
    return row


def ratio_text(ratio: float, bound: bool, reference_bound: bool) -> tuple[str, str]:
    """``(relation, words)`` of a cost ratio to the reference's: ``"="`` both ``tau_int`` trusted, ``">="`` only this
    one's a lower bound, ``"<="`` only the reference's (the reference dearer than shown), ``"?"`` both (no conclusion)."""
    if not bound and not reference_bound:
        return "=", f"{ratio:.3g}"
    if bound and not reference_bound:
        return ">=", f">= {ratio:.3g} (its tau_int a lower bound)"
    if reference_bound and not bound:
        return "<=", f"<= {ratio:.3g} (the reference's tau_int a lower bound: the reference dearer than shown)"
    return "?", f"{ratio:.3g}, both tau_int lower bounds: no conclusion"


def _add_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    ref = frame.iloc[0]
    for cost in ("cpu s/indep", "cpu s/indep+training"):
        ratios = frame[cost] / ref[cost]
        frame[f"{cost} ratio"] = ratios
        frame[f"{cost} ratio relation"] = [ratio_text(r, b, bool(ref["bound"]))[0] for r, b in zip(ratios, frame["bound"])]
    return frame


# -- text --------------------------------------------------------------------------------------------


def _pm(mean: float, error: float, digits: int = 4) -> str:
    return f"{mean:.{digits}g}" + (f"±{error:.2g}" if math.isfinite(error) else "")


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header] + rows]


def format_comparison(frame: pd.DataFrame, *, heading: str, start_note: str) -> str:
    """The comparison as printed: a cost table, an observables table (exact values and pulls), and notes on every
    lower bound and ratio."""
    lines = [heading, f"# start (all samplers): {start_note}"]
    rows = []
    for _, r in frame.iterrows():
        ge = ">=" if r["bound"] else ""
        step = f"{r['step_size']:.4g}x{int(r['n_steps'])}" if math.isfinite(r["step_size"]) else "-"
        rows.append([
            r["sampler"], step, f"{r['acceptance']:.3f}", _pm(r["exp(-dH)"], r["exp(-dH) err"], 3),
            f"{r['slow']}" if r["slow"] else "-", ge + _pm(r["tau_int"], r["tau_int err"], 3),
            f"{r['s/traj']:.2e}", f"{r['cpu s/traj']:.2e}", ge + f"{r['cpu s/indep']:.2e}",
            ge + f"{r['cpu s/indep+training']:.2e}", f"{r['training s']:.3g}",
            {"=": "", ">=": ">=", "<=": "<=", "?": "?"}[r["cpu s/indep ratio relation"]] + f"{r['cpu s/indep ratio']:.3g}",
        ])
    amortize = int(frame["amortize"].iloc[0])
    header = ["sampler", "step x n", "acc", "<exp(-dH)>", "slow obs", "tau_int", "s/traj", "CPU s/traj",
              "CPU s/indep", f"+train/{amortize:.0e}", "train s", "ratio"]
    lines += _text_table(header, rows)
    observables = [c[: -len(" exact")] for c in frame.columns if c.endswith(" exact")]
    if observables:
        exact = ["exact"] + [f"{frame[f'{o} exact'].iloc[0]:.6g}" if math.isfinite(frame[f"{o} exact"].iloc[0]) else "-" for o in observables]
        obs_rows = [[r["sampler"]] + [
            _pm(r[o], r[f"{o} err"], 6) + (f" ({r[f'{o} pull']:+.1f})" if math.isfinite(r[f"{o} pull"]) else "")
            for o in observables] for _, r in frame.iterrows()]
        lines += ["# observables: mean±error (pull = (mean - exact) / error, where exact is known)"]
        lines += _text_table(["sampler"] + observables, obs_rows + [exact])
    ref = frame.iloc[0]
    for _, r in frame.iterrows():
        if r["bound"]:
            lines.append(f"#   {r['sampler']}: tau_int({r['slow']}) is a LOWER BOUND ({r['note']}); so is every cost built on it")
    for _, r in frame.iloc[1:].iterrows():
        what = ratio_text(r["cpu s/indep ratio"], bool(r["bound"]), bool(ref["bound"]))[1]
        with_training = ratio_text(r["cpu s/indep+training ratio"], bool(r["bound"]), bool(ref["bound"]))[1]
        lines.append(f"#   {r['sampler']}: CPU cost per independent {r['slow']} / {ref['sampler']}'s = {what}; with training "
                     f"amortized over {amortize} samples: {with_training}")
    lines.append("# costs per chain and update, measured phase only (chains advance as one batch); CPU seconds of this "
                 "process; times from one machine, possibly shared: read ratios, rerun before quoting")
    return "\n".join(lines)


# -- figures -----------------------------------------------------------------------------------------


def history_figure(path: Path, contestants: Sequence[Contestant], runs: dict[str, Measured], slow: str | None) -> Path | None:
    """``path`` (PNG): chain 0's history of the slow observable and of the first other observable, one column per
    contestant (the seed paper's Fig. 4); None without matplotlib or observables."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    columns = [c for c in contestants[0].simulation.observables if c != slow]
    rows = [c for c in (slow, columns[0] if columns else None) if c is not None]
    if not rows:
        return None
    fig = Figure(figsize=(4.5 * len(contestants), 2.2 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(contestants), sharey="row", squeeze=False)
    for j, c in enumerate(contestants):
        table = runs[c.label].table
        chain0 = table[table[CHAIN] == table[CHAIN].min()]
        for i, column in enumerate(rows):
            axes[i, j].plot(chain0[TRAJECTORY], chain0[column], lw=0.7, color=f"C{j}",
                            drawstyle="steps-post" if column == slow else "default")
            axes[i, 0].set_ylabel(column)
        axes[0, j].set_title(f"{c.label}, chain 0", fontsize=9)
        axes[-1, j].set_xlabel("trajectory (after thermalization)")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def _file_key(i: int, label: str) -> str:
    return f"{i}_" + "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label.split(" (")[0])


# -- the whole comparison ----------------------------------------------------------------------------


def compare(
    contestants: Sequence[Contestant],
    *,
    out: str | Path,
    equilibrate: int = 200,
    amortize: int = DEFAULT_AMORTIZE,
    figures: bool = True,
    progress: bool | None = False,
    echo=print,
) -> Comparison:
    """Run the comparison and write ``out``: ``comparison.csv`` (the table), ``comparison.txt`` (as printed), per
    contestant ``<i>_<sampler>_table.csv.gz``, ``_summary.csv`` and ``_spec.json`` (the sampler as tuned), and
    figures (``histories.png``, ``figures_<i>_<sampler>/``). ``out`` must not exist or be empty; every check is
    done before anything runs. ``echo``: where progress lines go (``print``; ``None``: nowhere)."""
    echo = echo or (lambda *a, **k: None)
    for name, value, least in (("equilibrate", equilibrate, 0), ("amortize", amortize, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise CompareError(f"compare --{name}: expected an integer >= {least}, got {value!r}")
    contestants = _unique_labels(contestants)
    check_same_target(contestants)
    for c in contestants:
        if c.simulation.settings.n_trajectories < 2:
            raise CompareError(f"compare {c.source}: n_trajectories {c.simulation.settings.n_trajectories}: expected at least 2 measured updates per chain for a tau_int")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompareError(f"compare --out {out}: exists and is not an empty folder; choose another --out or remove it")
    first = contestants[0].simulation
    for c in contestants:  # a spec with an untrained flow is trained first, as `lattice-flows run` does
        sim = c.simulation
        if sim.flow is not None and sim.training is not None and not sim.training_done:
            echo(f"# {c.label}: training its flow first, as lattice-flows run does (its spec's training section)", flush=True)
            sim.train(progress=progress)
    start = common_start(contestants, equilibrate=equilibrate)
    echo(f"# start (all samplers): {start.note} ({start.seconds:.1f} s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Measured] = {}
    rows = []
    for i, c in enumerate(contestants):
        measured = timed_run(c.simulation, start.fields, progress=progress)
        runs[c.label] = measured
        key = _file_key(i, c.label)
        measured.table.to_csv(out / f"{key}_table.csv.gz", index=False)
        measured.summary.to_csv(out / f"{key}_summary.csv")
        spec = c.simulation.to_spec()
        spec["sampler"] = measured.table.attrs.get("sampler", spec["sampler"])
        (out / f"{key}_spec.json").write_text(json.dumps(spec, indent=2) + "\n")
        rows.append(comparison_row(c, measured, amortize=amortize))
        echo(f"# {c.label}: {measured.total:.1f} s, tuned sampler {spec['sampler']}", flush=True)
    frame = _add_ratios(pd.DataFrame(rows))
    s = first.settings
    action = first.to_spec()["action"]
    params = ", ".join(f"{k}={v}" for k, v in action.items() if k != "name")
    heading = (f"# compare: {action['name']} ({params}) on {lattice_text(first.lattice_shape)}, {s.dtype}, {s.n_chains} chains; "
               f"reference (ratios): {contestants[0].label}")
    text = format_comparison(frame, heading=heading, start_note=start.note)
    frame.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.txt").write_text(text + "\n")
    echo(text)
    if figures:
        written = _figures(out, contestants, runs, frame)
        echo(f"# figures: {', '.join(str(p) for p in written)}" if written
             else "# no figures: matplotlib is not installed (pip install -e '.[plots]')")
    echo(f"# table: {out / 'comparison.csv'}")
    return Comparison(frame=frame, text=text, start=start, runs=runs)


def _figures(out: Path, contestants: Sequence[Contestant], runs: dict[str, Measured], frame: pd.DataFrame) -> list[Path]:
    """The side-by-side histories and, per contestant, :func:`~lattice_flows.figures.write_figures` (its histories,
    ``P(Q)``, autocorrelation, ``delta_H`` and, for a trained flow, loss and ESS against training step)."""
    path = history_figure(out / "histories.png", contestants, runs, frame["slow"].iloc[0])
    if path is None:
        return []
    written = [path]
    for i, c in enumerate(contestants):
        sim, run = c.simulation, runs[c.label]
        history = sim.history if sim.samples_through_flow else None
        written += write_figures(out / f"figures_{_file_key(i, c.label)}", run.table, summary=run.summary,
                                 observables=sim.observables, history=history, lattice_shape=sim.lattice_shape)
    return written

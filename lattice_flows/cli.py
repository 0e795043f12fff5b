"""The ``lattice-flows`` command line (also ``python -m lattice_flows``).

Every job writes a run folder (:mod:`lattice_flows.rundir`): the resolved spec, the flow and its
training history, the chains checkpoint, the table, the summary and the figures. Errors a user can
cause (a bad spec, a bad value, an existing folder, a foreign checkpoint) end with one line on
standard error and exit status 2; Ctrl-C ends the current trajectory or training step, saves, and
exits with status 130, and ``--resume`` goes on from there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from . import compare, distributed
from .checkpoint import load_checkpoint
from .errors import LatticeFlowsError
from .analysis import format_value_error
from .figures import write_figures
from .flow_report import figure_context, flow_quality_on_lattice, training_line
from .reference import components_text, spec_keys_text
from .registry import ACTIONS
from .resources import is_allocation_failure
from .run_builder import default_observables
from .rundir import RunFolder, RunFolderError
from .spec import build_component, resume_difference, spec_fields
from .simulation import SPEC_KEYS, RunInterrupted, Simulation
from .specfile import apply_overrides, load_spec
from .training import TrainingError

__all__ = ["main", "DEFAULT_SPEC"]

log = logging.getLogger("lattice_flows")

#: The job ``lattice-flows run`` does without a spec file: HMC on 2D U(1) at beta = 3 on 16 x 16,
#: checked against the exact solution; about half a minute on two CPU cores.
DEFAULT_SPEC: dict[str, Any] = {
    "lattice": {"shape": [16, 16]},
    "action": {"name": "u1_wilson", "beta": 3.0},
    "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}},
    "observables": ["plaquette", "action_density", "topological_charge", {"name": "wilson_loop", "R": 2, "T": 2}],
    "n_chains": 32,
    "n_thermalization": 200,
    "n_trajectories": 2000,
    "seed": 1,
    "device": "cpu",
    "dtype": "float64",
}

#: Training is saved to the run folder after every this many seconds of training time.
TRAINING_SAVE_SECONDS = 60.0


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the job to stop after the current update (and save); a second one of
    either ends the process at once, with status ``128 + signal number``: the files written so far are
    intact (every write is atomic), and ``--resume`` continues from the last checkpoint."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            # not an exception: it could be caught, or wait for the end of a long update; the last
            # checkpoint is complete (atomic writes), a half-written temporary file is removed on --resume
            os.write(2, f"lattice-flows: {name} again: stopped at once; continue from the last checkpoint with --resume\n".encode())
            os._exit(128 + signum)
        self.requested = True
        log.warning("%s: stopping after the current update (Ctrl-C or SIGTERM again to stop at once)", name)

    def __enter__(self) -> "StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Stopped(Exception):
    """The job stopped on request; everything is saved."""


# -- specs and folders ---------------------------------------------------------------------------


def _is_checkpoint(path: str) -> bool:
    return Path(path).suffix == ".pt"


def resolve(args: argparse.Namespace) -> tuple[Simulation, str]:
    """The simulation the command line asks for (spec file or checkpoint, plus ``--set``), and its name."""
    source = getattr(args, "spec", None)
    if source is not None and _is_checkpoint(source):
        saved = load_checkpoint(source)["spec"]
        spec = apply_overrides(saved, args.set or [])
        overrides = {k: v for k, v in spec.items() if saved.get(k) != v}
        return Simulation.load(source, **overrides), _checkpoint_run_name(Path(source), args.command)
    spec = load_spec(source) if source else DEFAULT_SPEC
    spec = apply_overrides(spec, args.set or [])
    return Simulation.from_spec(spec), Path(source).stem if source else "default"


def _checkpoint_run_name(path: Path, command: str) -> str:
    """The default run folder's name for a job on a flow checkpoint: after the run folder it comes from
    (``runs/b2/flow.pt`` -> ``b2-sample``) or the file (``b2.pt`` -> ``b2-sample``), so that jobs on two
    runs' flows do not collide."""
    folder = path.resolve().parent
    in_run_folder = path.name == "flow.pt" and folder.name and (folder / "spec.json").exists()
    return f"{folder.name if in_run_folder else path.stem}-{command}"


#: The run folders this process holds (locked), released when :func:`main` returns.
_HELD: list[RunFolder] = []


def open_folder(args: argparse.Namespace, sim: Simulation, name: str) -> RunFolder:
    """The run folder, made (or checked for ``--resume``) and locked by rank 0 for the whole job; the other
    ranks wait and share it."""
    out = Path(args.out) if args.out else Path("runs") / name
    error, folder = None, RunFolder(out)
    if distributed.is_main():
        try:
            folder = RunFolder.open(out, sim.to_spec(), resume=args.resume)
            _HELD.append(folder)
        except LatticeFlowsError as exc:
            error = str(exc)
    error = distributed.all_gather_objects(error)[0]  # every rank fails alike, or none does
    if error is not None:
        raise RunFolderError(error)
    log.info("run folder: %s", out)
    return folder


def _release_folders(failed: bool) -> None:
    """Release the folders this process holds; after a failure, first remove a folder it made that holds
    nothing but ``spec.json`` (the job failed before it wrote anything), so that the same command works
    once the cause is fixed."""
    while _HELD:
        folder = _HELD.pop()
        if failed:
            folder.remove_if_only_spec()
        folder.release()


def _with_folder_flow(sim: Simulation, folder: RunFolder) -> Simulation:
    """The simulation with the flow saved in the run folder, if there is one."""
    if sim.flow is None or not folder.flow.exists():
        return sim
    loaded = Simulation.load(folder.flow)
    saved, wanted = loaded.to_spec(), sim.to_spec()
    if saved == wanted:
        return loaded
    if resume_difference(saved, wanted) is not None:
        raise LatticeFlowsError(f"{folder.flow}: the flow checkpoint was written by another spec than {folder.spec}")
    return loaded.evolve(n_trajectories=sim.settings.n_trajectories)  # a run extended by --resume


# -- jobs ----------------------------------------------------------------------------------------


def train_job(sim: Simulation, folder: RunFolder, args, stop: StopRequest) -> None:
    """Train until the budget is spent, saving the flow and its history every minute and at the end."""
    if sim.training is None or sim.training_done:
        if sim.flow is not None and sim.training is None:
            log.info("the spec has no 'training' section: the flow is used as built")
        return
    step = 0 if sim.history is None else len(sim.history)
    log.info("training the flow from step %d (n_steps %d, max_seconds %s)", step, sim.training.n_steps, sim.training.max_seconds)
    while not sim.training_done and not distributed.any_rank(stop()):
        elapsed = 0.0 if sim.history is None or not len(sim.history) else float(sim.history["seconds"].iloc[-1])
        try:
            sim.train(progress=False if args.quiet else None, pause_at_seconds=elapsed + TRAINING_SAVE_SECONDS, should_stop=stop)
        except TrainingError:  # nothing measured is lost: the history up to the failure
            if distributed.is_main() and sim.history is not None:
                folder.write_history(sim.history)
            raise
        sim.save(folder.flow)  # every rank takes part (RNG states are gathered); rank 0 writes
        if distributed.is_main():
            folder.write_history(sim.history)
    log.info("training: %s", training_line(sim.history))
    if distributed.any_rank(stop()):
        raise Stopped(f"training stopped at step {len(sim.history)}; the flow is saved in {folder.flow}")
    if distributed.is_main():
        folder.update_status(training="complete")


def sample_job(sim: Simulation, folder: RunFolder, args, stop: StopRequest) -> pd.DataFrame:
    s = sim.settings
    log.info(
        "sampling: %s, %d chains x %d trajectories (+%d thermalization), %s on %s",
        sim.to_spec()["sampler"]["name"], s.n_chains, s.n_trajectories, s.n_thermalization, s.dtype, sim.device,
    )
    if sim.flow is not None and distributed.all_gather_objects(folder.flow.exists())[0] is False:
        sim.save(folder.flow)  # the flow the chains ran with, so that --resume and report find it
    if sim.flow is not None and distributed.is_main():
        message, quality = flow_quality_on_lattice(sim)  # ESS on this lattice, fresh samples
        log.info("%s", message)
        folder.update_status(**quality)
    start = time.perf_counter()
    try:
        table = sim.run(checkpoint=folder.chains, checkpoint_every=args.checkpoint_every, progress=False if args.quiet else None, should_stop=stop)
    except RunInterrupted as exc:
        raise Stopped(str(exc)) from None
    seconds = time.perf_counter() - start
    if distributed.is_main():
        folder.write_table(table, csv=args.csv)
        folder.update_status(
            sampling="complete", sampler=table.attrs.get("sampler"), sampling_seconds=seconds, processes=distributed.world_size()
        )
    log.info("sampling: %.1f s this session", seconds)
    return table


def report(sim: Simulation, folder: RunFolder, table: pd.DataFrame) -> None:
    """Summary (printed and written) and figures of a finished run."""
    summary = sim.summary(table)
    text = format_summary(summary)
    folder.write_summary(summary, text)
    # printed before the figures are drawn, so that a figure that cannot be written hides no result
    print(text)
    for line in summary_warnings(summary):
        print(f"lattice-flows: warning: {line}", file=sys.stderr)
    history = sim.history if sim.history is not None else folder.read_history()
    figures = write_figures(
        folder.figures, table, summary=summary, observables=sim.observables, history=history, **figure_context(sim, folder.status())
    )
    log.info("summary: %s; figures: %s", folder.summary_txt, ", ".join(p.name for p in figures) or "none")


def summary_warnings(summary: pd.DataFrame) -> list[str]:
    """One line per unreliable row of ``summary``, ``"<observable>: <note>"``, for standard error."""
    if "reliable" not in summary.columns:
        return []
    notes = summary["note"] if "note" in summary.columns else pd.Series("", index=summary.index)
    return [f"{name}: {notes[name] or 'unreliable'}" for name in summary.index[~summary["reliable"].astype(bool)]]


def format_summary(summary: pd.DataFrame, *, width: int = 100) -> str:
    """The summary as the terminal and ``summary.txt`` show it: one line per observable, notes below.

    Columns: ``observable``; ``value``, the mean with its error in brackets on its last digits
    (:func:`lattice_flows.analysis.format_value_error`: ``0.91236(12)``); ``exact`` to one digit
    more than the value; ``pull``, (mean - exact) / error; ``tau_int`` with its error; ``reliable``
    (``yes``/``no``) with ``[n]`` pointing at footnote ``n``, the row's note, wrapped to ``width``.
    """
    import textwrap

    def cell(row, key):
        value = row.get(key, float("nan"))
        return float(value) if value is not None and pd.notna(value) else float("nan")

    lines, notes = [], []
    for name, row in summary.iterrows():
        mean, error, exact, pull = cell(row, "mean"), cell(row, "error"), cell(row, "exact"), cell(row, "pull")
        value = format_value_error(mean, error)
        if exact == exact:  # not nan: as many decimals as the value shows, and one more
            decimals = len(value.split("(")[0].partition(".")[2]) if "e" not in value else 6
            exact_text = f"{exact:.{decimals + 1}f}" if abs(exact) < 1e6 else f"{exact:.6g}"
        else:
            exact_text = "-"
        pull_text = "-" if pull != pull else f"{pull:+.1f}"  # nan: no exact value, or no error
        tau = cell(row, "tau_int")
        tau_text = format_value_error(tau, cell(row, "tau_int_error"), digits=1) if tau == tau else "-"
        reliable = "-" if "reliable" not in row else ("yes" if bool(row["reliable"]) else "no")
        note = row.get("note", "")
        if isinstance(note, str) and note:
            notes.append(f"{name}: {note}")
            reliable += f" [{len(notes)}]"
        lines.append([str(name), value, exact_text, pull_text, tau_text, reliable])
    header = ["observable", "value", "exact", "pull", "tau_int", "reliable"]
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    rows = [
        "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in [header] + lines
    ]
    for i, note in enumerate(notes, 1):
        rows.extend(textwrap.wrap(note, width, initial_indent=f"[{i}] ", subsequent_indent=" " * (len(str(i)) + 3)))
    return "\n".join(rows)


# -- commands ------------------------------------------------------------------------------------


def _job(args: argparse.Namespace, *, train: bool, sample: bool) -> int:
    if args.threads < 0:
        raise LatticeFlowsError(f"--threads: expected 0 (torch's default) or a positive number, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if distributed.init_from_environment(args.backend):
        log.info("process %d of %d (backend %s)", distributed.rank(), distributed.world_size(), torch.distributed.get_backend())
    sim, name = resolve(args)
    if train and not sample and sim.flow is None:  # before the folder is made
        raise LatticeFlowsError("train: the spec has no 'flow' section, so there is nothing to train")
    folder = open_folder(args, sim, name)
    sim = _with_folder_flow(sim, folder)
    with StopRequest() as stop:
        try:
            if train:
                if sim.flow is not None:
                    train_job(sim, folder, args, stop)
            if sample:
                table = sample_job(sim, folder, args, stop)
        except Stopped as exc:
            print(f"lattice-flows: {exc}; continue with --resume", file=sys.stderr)
            return 130
    if not distributed.is_main():
        return 0
    if sample:
        report(sim, folder, table)
    elif sim.history is not None:
            write_figures(folder.figures, pd.DataFrame(), history=sim.history, lattice_shape=sim.lattice_shape)
    return 0


def cmd_run(args):
    return _job(args, train=True, sample=True)


def cmd_train(args):
    return _job(args, train=True, sample=False)


def cmd_sample(args):
    return _job(args, train=False, sample=True)


def cmd_report(args) -> int:
    folder = RunFolder(args.run_dir)
    spec = folder.read_spec()
    _HELD.append(folder.hold())  # the summary and figures are rewritten: not while a job runs there
    sim = Simulation.from_spec(spec)
    sim = _with_folder_flow(sim, folder)
    report(sim, folder, folder.read_table())
    return 0


def _exact_action_section(args: argparse.Namespace) -> dict[str, Any]:
    """The action's spec section from ``--action``, ``--beta`` (only for an action with a ``beta``) and
    ``--set PARAM=VALUE`` (``action.PARAM=VALUE`` is read the same)."""
    if args.action not in ACTIONS.names():
        raise LatticeFlowsError(f"exact --action: unknown action {args.action!r}; available actions: {', '.join(sorted(ACTIONS.names()))}")
    accepted = [f.name for f in spec_fields(ACTIONS.get(args.action))]
    section: dict[str, Any] = {"name": args.action}
    if args.beta is not None:
        if "beta" not in accepted:
            example = f"; give them with --set, e.g. --set {accepted[0]}=..." if accepted else ""
            raise LatticeFlowsError(
                f"exact --beta: the action {args.action!r} has no parameter beta "
                f"(its parameters: {', '.join(accepted) or 'none'}){example}"
            )
        section["beta"] = args.beta
    assignments = []
    for assignment in args.set or []:
        key, sep, value = assignment.partition("=")
        key = key.strip()
        key = key[len("action."):] if key.startswith("action.") else key
        if not sep or not key or "." in key:
            raise LatticeFlowsError(f"exact --set {assignment!r}: expected PARAM=VALUE for a parameter of the action, e.g. kappa=0.25")
        if key == "name":
            raise LatticeFlowsError(f"exact --set {assignment!r}: choose the action with --action")
        assignments.append(f"{key}={value}")
    return apply_overrides(section, assignments)


def cmd_exact(args) -> int:
    """Print the exact values the action's default observables know (all computed before anything is printed)."""
    section = _exact_action_section(args)
    shape = tuple(args.shape)
    where = "x".join(map(str, shape))
    if any(n < 1 for n in shape):
        raise LatticeFlowsError(f"exact --shape: expected positive lattice sizes such as 16 16, got {' '.join(map(str, shape))}")
    context: dict[str, Any] = {"lattice_shape": shape}
    action = build_component("actions", section, "exact: action", context)
    try:
        action.field_shape(shape)
    except ValueError as exc:
        raise LatticeFlowsError(f"exact --shape: {exc}") from None
    context["action"] = action
    observables = default_observables(action, context)
    params = ", ".join(f"{k}={v}" for k, v in action.to_spec().items())
    lines = [f"# exact values: {args.action} ({params}) on {where}"]
    try:
        values = [line for column, obs in observables.items() for line in _exact_lines(column, obs)]
        distributions = [line for column, obs in observables.items() for line in _distribution_lines(column, obs)]
    except (ValueError, ArithmeticError) as exc:
        raise LatticeFlowsError(
            f"exact: the exact values of {args.action} ({params}) on {where} cannot be computed ({type(exc).__name__}: {exc})"
        ) from None
    lines += values + distributions
    if not values:
        lines.append("# no exact values are known for this action")
    print("\n".join(lines))
    return 0


def _exact_lines(column: str, obs) -> list[str]:
    return [f"<{column}{'' if power == 1 else f'^{power}'}> = {value:.12g}" for power, value in sorted(obs.exact().items())]


def _distribution_lines(column: str, obs) -> list[str]:
    distribution = obs.exact_distribution()
    if not distribution:
        return []
    return [f"# P({column} = q), for P >= 1e-12"] + [f"{q:4d}  {p:.12g}" for q, p in sorted(distribution.items()) if p >= 1e-12]


def cmd_compare(args) -> int:
    """Samplers side by side (:mod:`lattice_flows.compare`): every check before anything runs or is written."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {key: value for key, value in (("n_chains", args.chains), ("n_thermalization", args.thermalization),
                                              ("n_trajectories", args.trajectories)) if value is not None}
    contestants = [compare.load_contestant(source, args.set or [], settings=settings) for source in args.sources]
    compare.compare(
        contestants, out=args.out, equilibrate=args.equilibrate, amortize=args.amortize, figures=not args.no_figures,
        progress=False if args.quiet else None, echo=None if args.quiet else print,
    )
    if args.quiet:  # the table still shows
        print((Path(args.out) / "comparison.txt").read_text(), end="")
    return 0


def cmd_plugins(args) -> int:
    print(components_text())
    return 0


# -- parser --------------------------------------------------------------------------------------


def _spec_help() -> str:
    try:
        return spec_keys_text()
    except Exception:  # the help must show even if a plugin fails to load
        return "spec keys: " + ", ".join(SPEC_KEYS)


#: Most torch threads per process that --threads accepts: four per CPU here (more only thrash).
MAX_THREADS = 4 * (os.cpu_count() or 1)


def _int_argument(minimum: int, maximum: int | None, what: str):
    """An argparse ``type`` for an integer in ``[minimum, maximum]``: a bad value is an argument error
    (exit status 2) naming the flag, the value and the range, before anything runs."""
    allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, {allowed}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, {allowed}, got {value}")
        return value

    return parse


def _job_parser(sub, name: str, help: str, description: str, *, spec_help: str, sampling: bool):
    p = sub.add_parser(
        name, help=help, description=description + "\n\n" + _spec_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("spec", nargs="?" if name == "run" else None, metavar="SPEC" if name != "sample" else "SPEC_OR_CHECKPOINT", help=spec_help)
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a spec value, e.g. action.beta=2.0 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<spec file name>, runs/default for the built-in job)")
    p.add_argument("--resume", action="store_true", help="continue the run in an existing run folder (same spec)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines (errors and the summary still show)")
    p.add_argument(
        "--threads", type=_int_argument(0, MAX_THREADS, "0 (torch's default) or a number of threads"), default=1, metavar="N",
        help="CPU threads of torch per process (default 1: the batches are small, and extra threads stall on a busy "
        "machine; 0 = torch's default)",
    )
    p.add_argument(
        "--backend", choices=distributed.BACKENDS,
        help="torch.distributed backend under torchrun (default: nccl with CUDA, else gloo)",
    )
    if sampling:
        p.add_argument("--csv", action="store_true", help="also write the table as table.csv")
        p.add_argument(
            "--checkpoint-every", type=_int_argument(1, None, "a number of updates"), default=100, metavar="N",
            help="save the chains every N updates (default 100)",
        )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lattice-flows", description="Lattice field theory with HMC and normalizing flows.")
    sub = parser.add_subparsers(dest="command", required=True)
    spec_file = "spec file (.toml, .yaml, .json)"
    _job_parser(
        sub, "run", "train the spec's flow if needed, then sample; write a run folder",
        "Run the job a spec describes: train its flow if it has one that is not trained yet, then sample, and write "
        "table, summary and figures into the run folder. Without a spec: the built-in default job (HMC for 2D U(1) "
        "at beta = 3 on 16x16).",
        spec_help=spec_file + "; default: the built-in job", sampling=True,
    ).set_defaults(func=cmd_run)
    _job_parser(
        sub, "train", "train the spec's flow and save it in the run folder",
        "Train the flow of a spec (its 'flow' and 'training' sections) and write flow.pt, history.csv and "
        "figures/training.png into the run folder.",
        spec_help=spec_file, sampling=False,
    ).set_defaults(func=cmd_train)
    _job_parser(
        sub, "sample", "sample without training: from a spec or a flow checkpoint",
        "Sample the chains of a spec, or of a flow checkpoint (a .pt file from Simulation.save or a run folder's "
        "flow.pt, with --set to change, e.g., lattice.shape=[16,16] or the sampler), without training.",
        spec_help=spec_file + " or flow checkpoint (.pt)", sampling=True,
    ).set_defaults(func=cmd_sample)
    cmp = sub.add_parser(
        "compare", help="samplers side by side from one start: acceptance, exact values, tau_int, cost per independent sample",
        description="Run several samplers of the same action, lattice and dtype (spec files, flow checkpoints or run "
        "folders) from the same equilibrated start (the theory's exact sampler where one is registered, else "
        "--equilibrate trajectories of the first sampler that goes through no flow), each tuning its step during its "
        "own thermalization, and print and write (--out) a table: acceptance, <exp(-dH)>, observables against exact "
        "values, tau_int of the slow observable (a lower bound, marked >=, where its window did not close), seconds "
        "per trajectory and per independent sample, with training amortized, and ratios to the first sampler.",
    )
    cmp.add_argument("sources", nargs="+", metavar="SPEC_OR_RUN", help="spec file, flow checkpoint (.pt) or run folder; the first is the reference of the ratios")
    cmp.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a spec value of every sampler, e.g. lattice.shape=[16,16] (repeatable)")
    cmp.add_argument("--chains", type=_int_argument(1, None, "a number of chains"), metavar="N", help="chains of every sampler (default: each spec's n_chains; they must agree)")
    cmp.add_argument("--thermalization", type=_int_argument(0, None, "a number of updates"), metavar="N", help="tuning updates of every sampler (default: each spec's)")
    cmp.add_argument("--trajectories", type=_int_argument(2, None, "a number of updates"), metavar="N", help="measured updates of every sampler (default: each spec's)")
    cmp.add_argument("--equilibrate", type=_int_argument(0, None, "a number of updates"), default=200, metavar="N",
                     help="without an exact sampler: trajectories of the first flow-free sampler to the common start (default 200)")
    cmp.add_argument("--amortize", type=_int_argument(1, None, "a number of samples"), default=compare.DEFAULT_AMORTIZE, metavar="N",
                     help="independent samples a flow's training seconds are spread over (default 100000)")
    cmp.add_argument("--out", default="runs/compare", metavar="DIR", help="folder for the tables, specs and figures (must not exist or be empty; default runs/compare)")
    cmp.add_argument("--no-figures", action="store_true", help="write no figures")
    cmp.add_argument("--quiet", action="store_true", help="no progress lines (the table still shows)")
    cmp.add_argument("--threads", type=_int_argument(0, MAX_THREADS, "0 (torch's default) or a number of threads"), default=1, metavar="N",
                     help="CPU threads of torch (default 1; 0 = torch's default)")
    cmp.set_defaults(func=cmd_compare)
    plugins = sub.add_parser(
        "plugins", help="list every registered component by kind, with its package and parameters",
        description="List every registered component (actions, flows, integrators, observables, samplers), the "
        "package that registers it, and its spec parameters with their types, defaults and ranges.",
    )
    plugins.set_defaults(func=cmd_plugins)
    exact = sub.add_parser(
        "exact", help="exact values of a theory's observables (2D U(1): <cos x_P>, <Q^2>, P(Q); free phi4; ...)",
        description="Print the exact expectation values that the default observables of an action know on a\n"
        "lattice, and exact distributions such as P(Q) of the 2D U(1) topological charge. The action's\n"
        "parameters come from --beta (for an action with a beta) and --set PARAM=VALUE, e.g.\n\n"
        "  lattice-flows exact --beta 6 --shape 16 16\n"
        "  lattice-flows exact --action phi4 --set kappa=0.2 --set lam=0 --shape 8 8   # the free field",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exact.add_argument("--beta", type=float, help="the action's coupling beta, for an action that has one (u1_wilson, xy)")
    exact.add_argument("--shape", type=int, nargs="+", required=True, metavar="L", help="lattice sizes, e.g. 16 16")
    exact.add_argument("--action", default="u1_wilson", help="registered action name (default u1_wilson)")
    exact.add_argument(
        "--set", action="append", metavar="PARAM=VALUE", help="a parameter of the action, e.g. kappa=0.2 (repeatable)"
    )
    exact.set_defaults(func=cmd_exact)
    rep = sub.add_parser(
        "report", help="summary table and figures of a finished run folder",
        description="Analyse the table of a finished run folder again: print and write the summary (summary.txt, "
        "summary.csv) and redraw the figures, from the folder alone.",
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds spec.json and the table)")
    rep.set_defaults(func=cmd_report, quiet=False)
    return parser


def _setup_logging(quiet: bool) -> None:
    """Log lines on standard error; under several ranks only rank 0 logs (the others only errors)."""
    log.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lattice-flows: %(message)s"))
    log.addHandler(handler)
    main_rank = os.environ.get("RANK", "0") == "0"
    log.setLevel(logging.WARNING if quiet else logging.INFO if main_rank else logging.ERROR)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `lattice-flows` or `python -m lattice_flows` alone: the help, not a usage error
        build_parser().print_help()
        return 0
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    failed = True
    try:
        code = args.func(args)
        failed = False
        return code
    except BrokenPipeError:  # the output went to `head` or a closed pager: not an error
        sys.stderr.close()
        failed = False
        return 0
    except (LatticeFlowsError, ValueError, OSError) as exc:
        # one line, whatever the exception's text; an OSError (a full disk: ENOSPC) names its file
        message = " ".join(str(exc).split())
        print(f"lattice-flows: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not is_allocation_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"lattice-flows: error: out of memory ({first[:200]}); reduce lattice.shape, n_chains, n_trajectories "
            "or the flow's size (training.batch_size, n_layers, hidden); the last checkpoint, if any, is intact "
            "(continue with --resume)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("lattice-flows: interrupted", file=sys.stderr)
        return 130
    finally:
        _release_folders(failed)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

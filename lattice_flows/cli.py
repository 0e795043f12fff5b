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

from . import distributed
from .checkpoint import load_checkpoint
from .errors import LatticeFlowsError
from .rundir import RunFolder, RunFolderError
from .simulation import SPEC_KEYS, RunInterrupted, Simulation
from .specfile import apply_overrides, load_spec

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
    """Ctrl-C (SIGINT) or SIGTERM asks the job to stop after the current update; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after the current update (Ctrl-C again to stop at once)")

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
        return Simulation.load(source, **overrides), Path(source).stem
    spec = load_spec(source) if source else DEFAULT_SPEC
    spec = apply_overrides(spec, args.set or [])
    return Simulation.from_spec(spec), Path(source).stem if source else "default"


def open_folder(args: argparse.Namespace, sim: Simulation, name: str) -> RunFolder:
    """The run folder, made (or checked for ``--resume``) by rank 0; the other ranks wait and share it."""
    out = Path(args.out) if args.out else Path("runs") / name
    error = None
    if distributed.is_main():
        try:
            RunFolder.open(out, sim.to_spec(), resume=args.resume)
        except LatticeFlowsError as exc:
            error = str(exc)
    error = distributed.all_gather_objects(error)[0]  # every rank fails alike, or none does
    if error is not None:
        raise RunFolderError(error)
    log.info("run folder: %s", out)
    return RunFolder(out)


def _with_folder_flow(sim: Simulation, folder: RunFolder) -> Simulation:
    """The simulation with the flow saved in the run folder, if there is one."""
    if sim.flow is None or not folder.flow.exists():
        return sim
    loaded = Simulation.load(folder.flow)
    if loaded.to_spec() != sim.to_spec():
        raise LatticeFlowsError(f"{folder.flow}: the flow checkpoint was written by another spec than {folder.spec}")
    return loaded


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
        sim.train(progress=False if args.quiet else None, pause_at_seconds=elapsed + TRAINING_SAVE_SECONDS, should_stop=stop)
        sim.save(folder.flow)  # every rank takes part (RNG states are gathered); rank 0 writes
        if distributed.is_main():
            folder.write_history(sim.history)
    last = sim.history.iloc[-1]
    log.info("training: %d steps, %.0f s, last loss %.4g, ESS %.3f", len(sim.history), last["seconds"], last["loss"], last["ess"])
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
    from .figures import write_figures

    summary = sim.summary(table)
    text = format_summary(summary)
    folder.write_summary(summary, text)
    history = sim.history if sim.history is not None else folder.read_history()
    figures = write_figures(folder.figures, table, summary=summary, observables=sim.observables, history=history)
    print(text)
    log.info("summary: %s; figures: %s", folder.summary_txt, ", ".join(p.name for p in figures) or "none")


def format_summary(summary: pd.DataFrame) -> str:
    shown = summary[["mean", "error", "exact", "pull", "tau_int", "tau_int_error", "note"]].copy()
    shown["note"] = shown["note"].fillna("")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.6g}".format):
        return shown.to_string()


# -- commands ------------------------------------------------------------------------------------


def _job(args: argparse.Namespace, *, train: bool, sample: bool) -> int:
    if args.threads < 0:
        raise LatticeFlowsError(f"--threads: expected 0 (torch's default) or a positive number, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if distributed.init_from_environment(args.backend):
        log.info("process %d of %d (backend %s)", distributed.rank(), distributed.world_size(), torch.distributed.get_backend())
    sim, name = resolve(args)
    folder = open_folder(args, sim, name)
    sim = _with_folder_flow(sim, folder)
    with StopRequest() as stop:
        try:
            if train:
                if sim.flow is None and not sample:
                    raise LatticeFlowsError("train: the spec has no 'flow' section, so there is nothing to train")
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
        from .figures import write_figures

        write_figures(folder.figures, pd.DataFrame(), history=sim.history)
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
    sim = Simulation.from_spec(spec)
    sim = _with_folder_flow(sim, folder)
    report(sim, folder, folder.read_table())
    return 0


def cmd_exact(args) -> int:
    from .spec import build_component

    section = apply_overrides({"name": args.action, "beta": args.beta}, args.set or [])
    context: dict[str, Any] = {"lattice_shape": tuple(args.shape)}
    action = build_component("actions", section, "exact: action", context)
    context["action"] = action
    observables = Simulation._default_observables(action, context)
    params = ", ".join(f"{k}={v}" for k, v in action.to_spec().items())
    print(f"# exact values: {args.action} ({params}) on {'x'.join(map(str, args.shape))}")
    found = False
    for column, obs in observables.items():
        for power, value in sorted(obs.exact().items()):
            found = True
            print(f"<{column}{'' if power == 1 else f'^{power}'}> = {value:.12g}")
    for column, obs in observables.items():
        distribution = obs.exact_distribution()
        if distribution:
            print(f"# P({column} = q), for P >= 1e-12")
            for q, p in sorted(distribution.items()):
                if p >= 1e-12:
                    print(f"{q:4d}  {p:.12g}")
    if not found:
        print("# no exact values are known for this action")
    return 0


def cmd_plugins(args) -> int:
    from .reference import components_text

    print(components_text())
    return 0


# -- parser --------------------------------------------------------------------------------------


def _spec_help() -> str:
    try:
        from .reference import spec_keys_text

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


def _is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``torch.OutOfMemoryError``, ``MemoryError`` or the CPU
    allocator's ``RuntimeError`` ("can't allocate memory")."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


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
    plugins = sub.add_parser("plugins", help="list every registered component by kind, with its package and parameters")
    plugins.set_defaults(func=cmd_plugins)
    exact = sub.add_parser(
        "exact", help="exact values of a theory's observables (2D U(1): <cos x_P>, <Q^2>, P(Q), ...)",
        description="Print the exact expectation values that the observables of an action know, and exact "
        "distributions such as P(Q) of the 2D U(1) topological charge.",
    )
    exact.add_argument("--beta", type=float, required=True, help="the action's coupling beta")
    exact.add_argument("--shape", type=int, nargs="+", required=True, metavar="L", help="lattice sizes, e.g. 16 16")
    exact.add_argument("--action", default="u1_wilson", help="registered action name (default u1_wilson)")
    exact.add_argument("--set", action="append", metavar="PARAM=VALUE", help="another parameter of the action")
    exact.set_defaults(func=cmd_exact)
    rep = sub.add_parser("report", help="summary table and figures of a finished run folder")
    rep.add_argument("run_dir", metavar="RUN_DIR")
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
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return args.func(args)
    except BrokenPipeError:  # the output went to `head` or a closed pager: not an error
        sys.stderr.close()
        return 0
    except (LatticeFlowsError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception's text
        print(f"lattice-flows: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
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
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

"""Run the documented commands that train a flow, at the documents' sizes, and check them against exact values.

``tests/test_docs.py`` runs every documented command and example that prints physics numbers, except those
that train a flow first: they take minutes. This script runs those, each exactly as its document writes it
(the spec file from the document's ``file=`` block, the command from its ``bash`` block), in a folder of its
own with ``--threads 1``, then reads the run folder's ``summary.csv`` and checks every row that has an exact
value: within 4 standard errors of it and reliable. It prints the rows, the wall-clock and CPU seconds the
command took (on a shared machine the CPU seconds say more), and exits 1 if a check fails.

    python benchmarks/check_docs.py                 # every such command (a few minutes each on one core)
    python benchmarks/check_docs.py --list          # only list them
    python benchmarks/check_docs.py --out runs/check_docs

``tests/test_docs.py::test_check_docs_finds_the_training_commands`` checks that this finds every one.
"""

from __future__ import annotations

import argparse
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PULL = 4.0
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")


@dataclass(frozen=True)
class Case:
    where: str  # document:line of the command
    words: list[str]  # the command after `lattice-flows`
    spec: str  # the spec file's name
    text: str  # the spec file, as the document writes it


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence``: the same character, at least as many, nothing else."""
    text = line.strip()
    return len(text) >= len(fence) and set(text) == {fence[0]}


def _blocks(path: Path):
    """``(line of the opening fence, info string, code)`` of every fenced block (no nesting)."""
    lines, i = path.read_text().splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, j = opening[1], i + 1
        while j < len(lines) and not _closes(lines[j], fence):
            j += 1
        yield i + 1, opening[2].strip(), "\n".join(lines[i + 1 : j]) + "\n"
        i = j + 1


def training_commands() -> list[Case]:
    """Every ``lattice-flows run SPEC ...`` of a ``bash`` block whose SPEC the document writes with a ``training`` section."""
    cases = []
    for path in DOC_FILES:
        relative = path.relative_to(ROOT).as_posix()
        blocks = list(_blocks(path))
        files = {info.split()[1][len("file=") :]: code for _, info, code in blocks if len(info.split()) == 2 and info.split()[1].startswith("file=")}
        for line, info, code in blocks:
            if info.split()[:1] != ["bash"]:
                continue
            for offset, text in enumerate(code.replace("\\\n", " ").splitlines()):
                for part in text.split("&&"):
                    words = shlex.split(part, comments=True)
                    if len(words) < 3 or Path(words[0]).name != "lattice-flows" or words[1] != "run" or words[2] not in files:
                        continue
                    if "training" in tomllib.loads(files[words[2]]):
                        cases.append(Case(f"{relative}:{line + 1 + offset}", words[1:], words[2], files[words[2]]))
    return cases


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(case: Case, out: Path, threads: int) -> bool:
    """Run one case in ``out``; print its summary rows and the checks; True if every check passed."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / case.spec).write_text(case.text)
    argv = [sys.executable, "-m", "lattice_flows", *case.words, "--out", "run", "--threads", str(threads), "--quiet"]
    print(f"\n## {case.where}: lattice-flows {shlex.join(case.words)}", flush=True)
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    done = subprocess.run(argv, cwd=out, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu_start
    print(done.stdout, end="")
    if done.stderr.strip():
        print("stderr:\n" + done.stderr.strip())
    if done.returncode != 0:
        print(f"FAIL: exit {done.returncode} after {seconds:.0f} s")
        return False
    summary = pd.read_csv(out / "run" / "summary.csv", index_col=0)
    known = summary[summary["exact"].notna()]
    bad = [f"{row}: pull {r['pull']:.2f}" for row, r in known.iterrows() if not abs(r["pull"]) < PULL]
    bad += [f"{row}: not reliable ({r['note']})" for row, r in known.iterrows() if not r["reliable"]]
    shown = known[["mean", "error", "exact", "pull", "reliable"]]
    print(f"checked rows ({seconds:.0f} s wall-clock, {cpu:.0f} s of CPU; {out / 'run'}):\n{shown.to_string()}")
    print("FAIL: " + "; ".join(bad) if bad else f"OK: every pull within {PULL:g}, every row reliable")
    return not bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the commands and exit")
    parser.add_argument("--out", type=Path, default=Path("runs/check_docs"), help="folder for the runs (default runs/check_docs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run (default 1)")
    args = parser.parse_args()
    cases = training_commands()
    if args.list:
        for case in cases:
            print(f"{case.where}: lattice-flows {shlex.join(case.words)}")
        return 0
    results = [check(case, args.out / f"{i}", args.threads) for i, case in enumerate(cases)]
    print(f"\n{sum(results)} of {len(results)} documented training commands agree with the exact values")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

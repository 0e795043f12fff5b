"""The documentation runs: every Python example in ``docs/*.md`` and ``README.md``, and the spec reference.

For each Markdown file, the fenced code blocks are taken in order and run in one namespace per file, in a
fresh temporary working directory (which is also put on ``sys.path``). The info string after the opening
fence says what happens to a block:

- ```` ```python ````: executed.
- ```` ```python no-run ````: shown only, never executed. For examples too long for the test suite (the
  README's 10-minute training); say in the text around it what it would do.
- ```` ```python requires=MODULE ````: executed if ``MODULE`` can be imported (``matplotlib`` for a
  figure), skipped otherwise; later blocks must not depend on it.
- ```` ```LANGUAGE file=NAME ````: written to ``NAME`` in the working directory instead of being executed:
  a plugin's module (``python file=my_plugin.py``, which entry points name as ``my_plugin:Class``) or a
  spec file (``toml file=spec.toml``) that later blocks read.
- ```` ```toml pyproject ````: a package's ``pyproject.toml``. Its ``[project.entry-points."lattice_flows.*"]``
  tables are registered, for the rest of the file, as if that package were installed: the entry points are
  faked exactly as the ``toy_plugins`` fixture of conftest.py does (``fake_entry_points``).

- ```` ```python slow ````: executed only with ``--run-slow`` (:func:`test_slow_examples_run`), at the size
  the document gives; for examples that print physics numbers but take minutes. Later blocks must not depend
  on it.

Any other block (``bash``, ``toml``, ``text``, ...) is not run. A ``python`` block with another marker is
an error, so a misspelt ``no-run`` cannot silently skip an example.

Physics numbers the documents print are checked against exact values:

- every summary an example computes (``Simulation.summary``) must have each row that has an exact value
  within 4 standard errors of it (:func:`check_summary`);
- every ``lattice-flows exact`` command of a ``bash`` block is run and its printed values compared with the
  theory's exact module (``lattice_flows_u1.exact``, ``lattice_flows_xy.exact``);
- every ``lattice-flows run`` command of a ``bash`` block whose spec needs no training (the default job, a
  spec file the document writes) is run and its ``summary.csv`` checked the same way; the default job at a
  reduced number of trajectories in the fast test and at its full size with ``--run-slow``;
- commands that train a flow take minutes: ``benchmarks/check_docs.py`` runs them at the documents' sizes
  (``test_check_docs_finds_the_training_commands`` checks that it finds them).

``docs/spec-reference.md`` must equal :func:`lattice_flows.reference.spec_reference_markdown` for the
components of this package; regenerate it with ``python -m lattice_flows.reference > docs/spec-reference.md``
(add ``--package lattice-flows`` where other packages register components too).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import shlex
import sys
import tomllib
from pathlib import Path

import entrypoints
import pandas as pd
import pytest
import torch

import lattice_flows
from exact_checks import PULL
from lattice_flows import Simulation
from lattice_flows.cli import main
from lattice_flows.reference import components_text, spec_keys_text, spec_reference_markdown
from lattice_flows.simulation import SPEC_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
REGENERATE = "python -m lattice_flows.reference --package lattice-flows > docs/spec-reference.md"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line number of the opening fence, info string, code)`` for every fenced block, in order."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        body, j = [], i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) and not closing["info"].strip():
                break
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        blocks.append((i + 1, info, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _register_pyproject(text: str, where: str, extra: dict) -> None:
    """Fake the ``lattice_flows.*`` entry points a pyproject.toml declares, as an installed package would."""
    project = tomllib.loads(text)["project"]
    dist = entrypoints.Distribution(project["name"], project.get("version"))
    for group, entries in project.get("entry-points", {}).items():
        if not group.startswith("lattice_flows."):
            continue
        for name, target in entries.items():
            extra.setdefault(group, []).append(entrypoints.EntryPoint.from_string(target, name, distro=dist))
    assert extra, f"{where}: a 'toml pyproject' block without [project.entry-points.\"lattice_flows.*\"] tables"
    for registry in lattice_flows.REGISTRIES.values():
        registry.reload()


def check_summary(summary: pd.DataFrame, where: str) -> None:
    """Every row of ``summary`` with an exact value lies within ``PULL`` standard errors of it; except a
    ``<exp(-delta_H)>`` that the summary itself marks as a heavy tail, whose mean falls short of 1 even for an exact
    sampler: there the identity ``delta_H_identity(K=2)``, which the summary points to, must be present and within
    ``PULL`` errors instead."""
    known = summary[summary["exact"].notna()]
    assert len(known), f"{where}: a summary without a single exact value to check"
    for row, r in known.iterrows():
        if row == "exp(-delta_H)" and r.get("reliable", True) is False and "heavy tail" in str(r.get("note", "")):
            assert "delta_H_identity(K=2)" in known.index, f"{where}: a heavy-tailed exp(-delta_H) without the identity"
            continue
        if r["error"] == 0:  # a constant column (exp(-delta_H) of an exact sampler): it must be the exact value
            assert r["mean"] == r["exact"], f"{where}: {row} = {r['mean']!r}, constant, against exact {r['exact']!r}"
            continue
        assert math.isfinite(r["pull"]) and abs(r["pull"]) < PULL, (
            f"{where}: {row} = {r['mean']:.6g} +- {r['error']:.2g} against exact {r['exact']:.6g}: pull {r['pull']:.2f}"
        )


def _record_summaries(monkeypatch) -> list:
    """Make every ``Simulation.summary`` call append ``(where, summary)`` to the returned list (``where``: see ``_WHERE``)."""
    recorded = []
    original = Simulation.summary

    def summary(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        recorded.append((_WHERE[0], result))
        return result

    monkeypatch.setattr(Simulation, "summary", summary)
    return recorded


#: The document and line of the block being executed, for the messages of :func:`check_summary`.
_WHERE = [""]


def _run_examples(path: Path, tmp_path, monkeypatch, fake_entry_points, slow: bool) -> list:
    """Run ``path``'s blocks (with ``slow`` also the ``python slow`` ones); returns the summaries they computed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures are written to files, never shown
    modules_before = set(sys.modules)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the examples' tensors are tiny: one thread is faster, and unhurt by a busy machine
    namespace: dict = {"__name__": "__docs__"}
    relative = path.relative_to(ROOT).as_posix()
    recorded = _record_summaries(monkeypatch)
    try:
        for line, info, code in code_blocks(path.read_text()):
            where = f"{relative}:{line}"
            _WHERE[0] = where
            words = info.split()
            language, markers = (words[0], words[1:]) if words else ("", [])
            if language == "toml" and markers == ["pyproject"]:
                _register_pyproject(code, where, fake_entry_points)
                continue
            if len(markers) == 1 and markers[0].startswith("file="):
                (tmp_path / markers[0][len("file=") :]).write_text(code)
                importlib.invalidate_caches()
                continue
            if language != "python" or markers == ["no-run"] or (markers == ["slow"] and not slow):
                continue
            if len(markers) == 1 and markers[0].startswith("requires="):
                if importlib.util.find_spec(markers[0][len("requires=") :]) is None:
                    continue
            else:
                assert markers in ([], ["slow"]), f"{where}: unknown marker {' '.join(markers)!r} on a python block; see tests/test_docs.py"
            exec(compile(code, where, "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        for name in set(sys.modules) - modules_before:  # the plugin modules written from the document
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(str(tmp_path)):
                del sys.modules[name]
    return recorded


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_examples_run(path, tmp_path, monkeypatch, fake_entry_points):
    for where, summary in _run_examples(path, tmp_path, monkeypatch, fake_entry_points, slow=False):
        check_summary(summary, where)


SLOW_DOCS = [p for p in DOC_FILES if any(info.split()[1:] == ["slow"] for _, info, _ in code_blocks(p.read_text()))]


@pytest.mark.slow
@pytest.mark.parametrize("path", SLOW_DOCS, ids=[p.relative_to(ROOT).as_posix() for p in SLOW_DOCS])
def test_slow_examples_run(path, tmp_path, monkeypatch, fake_entry_points):
    summaries = _run_examples(path, tmp_path, monkeypatch, fake_entry_points, slow=True)
    assert summaries, f"{path.name}: its slow examples compute no summary"
    for where, summary in summaries:
        check_summary(summary, where)


def test_code_block_parser():
    text = "a\n```python\nx = 1\n```\n\n  ```python no-run\n  y = 2\n  ```\n~~~toml pyproject\n[project]\n~~~\n"
    assert code_blocks(text) == [(2, "python", "x = 1\n"), (6, "python no-run", "y = 2\n"), (9, "toml pyproject", "[project]\n")]


def test_spec_reference_is_current():
    for registry in lattice_flows.REGISTRIES.values():
        registry.reload()
    expected = spec_reference_markdown(packages=["lattice-flows"])
    actual = (ROOT / "docs" / "spec-reference.md").read_text()
    assert actual == expected, f"docs/spec-reference.md is out of date; regenerate it with\n    {REGENERATE}"


def test_spec_reference_covers_every_parameter_of_a_third_party(toy_plugins):
    # Components of another package appear with their parameters; a flow's come from its Config.
    text = spec_reference_markdown()
    assert "### `gaussian`" in text and "| `sigma` | number | required | > 0 | width of the Gaussian |" in text
    assert "### `affine`" in text and "`init_log_scale`" in text and "from package `toy-plugins`" in text
    assert "### `gaussian`" not in spec_reference_markdown(packages=["lattice_flows"])


def test_spec_keys_text_has_one_line_per_key():
    lines = spec_keys_text().splitlines()
    assert [line.split()[0] for line in lines] == list(SPEC_KEYS)


def test_components_text_lists_every_component_and_parameter(toy_plugins):
    text = components_text()
    for kind, registry in lattice_flows.REGISTRIES.items():
        assert f"{kind} (entry-point group {registry.group}):" in text
        for name in registry.names():
            assert f"\n  {name}  [" in text
    assert "      sigma: number, required, > 0; width of the Gaussian" in text
    assert "[toy-plugins 1.0; toy_plugins:GaussianAction]" in text
    assert "(filled in by the simulation: flow)" in text  # fthmc, flow_imh


# -- the commands of the documents' bash blocks --------------------------------------------------


def doc_commands(subcommand: str) -> list[tuple[str, list[str], Path]]:
    """``(where, argv after 'lattice-flows', document)`` for every ``lattice-flows SUBCOMMAND`` in a ``bash`` block.

    Continued lines (``\\``) are joined, ``cmd1 && cmd2`` split, comments dropped; ``.venv/bin/lattice-flows``
    counts as ``lattice-flows``.
    """
    found = []
    for path in DOC_FILES:
        relative = path.relative_to(ROOT).as_posix()
        for line, info, code in code_blocks(path.read_text()):
            if info.split()[:1] != ["bash"]:
                continue
            for offset, text in enumerate(code.replace("\\\n", " ").splitlines()):
                for part in text.split("&&"):
                    words = shlex.split(part, comments=True)
                    if len(words) >= 2 and Path(words[0]).name == "lattice-flows" and words[1] == subcommand:
                        found.append((f"{relative}:{line + 1 + offset}", words[1:], path))
    return found


def _once(commands: list) -> list:
    """One case per distinct command (the default job is in two documents), named by all its places."""
    cases: dict = {}
    for where, words, doc in commands:
        key = (tuple(words), run_spec(words, doc)[1] if words[0] == "run" else None)
        if key in cases:
            cases[key] = (f"{cases[key][0]}, {where}", words, cases[key][2])
        else:
            cases[key] = (where, words, doc)
    return list(cases.values())


def _option(words: list[str], name: str, n: int = 1) -> list[str] | None:
    """The ``n`` values after option ``name`` in ``words``, or None."""
    return words[words.index(name) + 1 : words.index(name) + 1 + n] if name in words else None


def _sets(words: list[str]) -> dict[str, float]:
    """The ``--set PARAM=VALUE`` options of a command, as numbers."""
    return {w.split("=")[0]: float(w.split("=")[1]) for k, w in zip(words, words[1:]) if k == "--set"}


def _exact_values(
    action: str, beta: float | None, shape: tuple[int, int], params: dict[str, float]
) -> tuple[dict[str, float], dict[int, float]]:
    """The exact values and distribution ``lattice-flows exact`` must print, from the theory's exact module."""
    if action == "phi4":
        from lattice_flows_phi4 import exact
        from lattice_flows_phi4.action import Phi4

        free = Phi4(**params)
        assert free.lam == 0, "tests/test_docs.py knows phi4's exact values only for the free theory (lam = 0)"
        values = {
            "magnetization": 0.0,
            "abs_magnetization": exact.abs_magnetization(free, shape),
            "susceptibility": exact.susceptibility(free, shape),
            "phi_squared": exact.phi_squared(free, shape),
        }
        return values, {}
    if action == "u1_wilson":
        from lattice_flows_u1 import exact

        values = {
            "plaquette": exact.plaquette(beta, shape),
            "action_density": exact.action_density(beta, shape),
            "topological_charge": 0.0,
            "topological_charge^2": exact.topological_charge_squared(beta, shape),
        }
        return values, exact.topological_charge_distribution(beta, shape)
    if action == "xy":
        xy_exact = pytest.importorskip("lattice_flows_xy.exact")
        ref = xy_exact.reference(beta, shape)
        values = {"xy_energy": ref.energy, "helicity_modulus": ref.helicity_modulus, "xy_magnetization_squared": ref.magnetization_squared}
        return values, {}
    raise AssertionError(f"no exact module known to tests/test_docs.py for action {action!r}; add it to _exact_values")


EXACT_COMMANDS = _once(doc_commands("exact"))


@pytest.mark.parametrize("where, words, doc", EXACT_COMMANDS, ids=[w for w, _, _ in EXACT_COMMANDS])
def test_exact_commands_print_the_exact_values(where, words, doc, capsys):
    assert main(words) == 0, where
    out = capsys.readouterr().out
    action = (_option(words, "--action") or ["u1_wilson"])[0]
    beta = float(_option(words, "--beta")[0]) if "--beta" in words else None
    shape = tuple(int(n) for n in _option(words, "--shape", 2))
    values, distribution = _exact_values(action, beta, shape, _sets(words))
    printed = dict(line[1:].split("> = ") for line in out.splitlines() if line.startswith("<"))
    assert set(printed) == set(values), f"{where}: printed {sorted(printed)}, expected {sorted(values)}"
    for name, value in values.items():
        assert float(printed[name]) == pytest.approx(value, rel=1e-9, abs=1e-12), f"{where}: <{name}>"
    rows = [line.split() for line in out.splitlines() if re.fullmatch(r"\s+-?\d+\s+\S+", line)]
    assert {int(q): float(p) for q, p in rows} == pytest.approx({q: p for q, p in distribution.items() if p >= 1e-12}, rel=1e-9)


def doc_files(doc: Path) -> dict[str, str]:
    """The files a document writes (``LANGUAGE file=NAME`` blocks): ``{NAME: text}``."""
    files = {}
    for _, info, code in code_blocks(doc.read_text()):
        markers = info.split()[1:]
        if len(markers) == 1 and markers[0].startswith("file="):
            files[markers[0][len("file=") :]] = code
    return files


def run_spec(words: list[str], doc: Path) -> tuple[str | None, str | None]:
    """``(spec file, its text)`` of the ``run`` command ``words``: ``(None, None)`` for the default job, text None
    for a spec the document does not write (a placeholder such as ``spec.toml``)."""
    spec = words[1] if len(words) > 1 and not words[1].startswith("-") else None
    return spec, doc_files(doc).get(spec) if spec is not None else None


def trains(text: str | None) -> bool:
    """Whether a spec file (TOML text) trains a flow: those runs take minutes (``benchmarks/check_docs.py``)."""
    return text is not None and "training" in tomllib.loads(text)


def _runnable(words: list[str], doc: Path) -> bool:
    spec, text = run_spec(words, doc)
    return spec is None or (text is not None and not trains(text))


RUN_COMMANDS = _once([(w, words, doc) for w, words, doc in doc_commands("run") if _runnable(words, doc)])
#: The default job's trajectories in the fast test (its full 2000 with --run-slow).
REDUCED = ["--set", "n_trajectories=500"]


def _check_run_command(where, words, doc, tmp_path, monkeypatch, extra):
    """Run the command in ``tmp_path`` (its own ``--out`` replaced), check the summary, then ``report`` it."""
    monkeypatch.chdir(tmp_path)
    spec, text = run_spec(words, doc)
    if spec is not None:
        (tmp_path / spec).write_text(text)
        if "xy" in text:
            pytest.importorskip("lattice_flows_xy")
    argv = list(words)
    if "--out" in argv:
        del argv[argv.index("--out") : argv.index("--out") + 2]
    assert main(argv + extra + ["--out", "run", "--quiet", "--threads", "1"]) == 0, where
    summary = pd.read_csv(tmp_path / "run" / "summary.csv", index_col=0)
    check_summary(summary, where)
    known = summary[summary["exact"].notna()]
    assert known["reliable"].all(), f"{where}: not reliable: {known.loc[~known['reliable'], 'note'].to_dict()}"
    assert main(["report", "run"]) == 0  # report gives the same summary from the folder
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "summary.csv", index_col=0), summary)


@pytest.mark.parametrize("where, words, doc", RUN_COMMANDS, ids=[w for w, _, _ in RUN_COMMANDS])
def test_run_commands_match_the_exact_values(where, words, doc, tmp_path, monkeypatch):
    # The default job (no spec) with 500 instead of 2000 trajectories per chain, so that this takes seconds;
    # test_the_default_job_at_full_size_matches_the_exact_values runs it as documented.
    _check_run_command(where, words, doc, tmp_path, monkeypatch, REDUCED if run_spec(words, doc)[0] is None else [])


DEFAULT_JOB = [c for c in RUN_COMMANDS if run_spec(c[1], c[2])[0] is None][:1]


@pytest.mark.slow
@pytest.mark.parametrize("where, words, doc", DEFAULT_JOB, ids=[w for w, _, _ in DEFAULT_JOB])
def test_the_default_job_at_full_size_matches_the_exact_values(where, words, doc, tmp_path, monkeypatch):
    _check_run_command(where, words, doc, tmp_path, monkeypatch, [])


COMPARE_COMMANDS = _once(doc_commands("compare"))


@pytest.mark.parametrize("where, words, doc", COMPARE_COMMANDS, ids=[w for w, _, _ in COMPARE_COMMANDS])
def test_compare_commands_run_and_match_the_exact_values(where, words, doc, tmp_path, monkeypatch):
    # every `lattice-flows compare` of a bash block, on the spec files its document writes, its --out replaced
    monkeypatch.chdir(tmp_path)
    for name, text in doc_files(doc).items():
        (tmp_path / name).write_text(text)
    argv = list(words)
    if "--out" in argv:
        del argv[argv.index("--out") : argv.index("--out") + 2]
    assert main(argv + ["--out", "out", "--quiet", "--no-figures", "--threads", "1"]) == 0, where
    frame = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert len(frame) == len([w for w in words[1:] if not w.startswith("-") and (tmp_path / w).exists()]), where
    summaries = sorted((tmp_path / "out").glob("*_summary.csv"))
    assert len(summaries) == len(frame), where
    for path in summaries:
        check_summary(pd.read_csv(path, index_col=0), f"{where} ({path.name})")


def test_check_docs_finds_the_training_commands(monkeypatch):
    # Every `lattice-flows run` of a spec file that trains a flow is run by benchmarks/check_docs.py.
    path = ROOT / "benchmarks" / "check_docs.py"
    module_spec = importlib.util.spec_from_file_location("check_docs", path)
    check_docs = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, "check_docs", check_docs)  # dataclasses look their module up there
    module_spec.loader.exec_module(check_docs)
    expected = [w for w, words, doc in doc_commands("run") if trains(run_spec(words, doc)[1])]
    assert expected, "no documented command trains a flow: is the quickstart's spec example gone?"
    assert [case.where for case in check_docs.training_commands()] == expected


def test_check_summary_fails_on_a_bad_pull_and_passes_a_good_one():
    good = pd.DataFrame({"mean": [0.7652, 1.0], "error": [0.001, 0.0], "exact": [0.7650, 1.0], "pull": [0.2, float("nan")]},
                        index=["plaquette", "exp(-delta_H)"])
    check_summary(good, "good")
    bad = good.assign(mean=[0.7395, 1.0], error=[0.004, 0.0], pull=[-6.4, float("nan")])  # issue 13's quickstart plaquette
    with pytest.raises(AssertionError, match="plaquette = 0.7395 .* pull -6.40"):
        check_summary(bad, "bad")
    with pytest.raises(AssertionError, match="constant"):
        check_summary(good.assign(mean=[0.7652, 0.99]), "constant")
    # a heavy-tailed <exp(-delta_H)> (the summary says so) is read through the identity, which must then hold
    tail = pd.DataFrame({"mean": [0.869, 0.979], "error": [0.023, 0.009], "exact": [1.0, 1.0], "pull": [-5.7, -2.3],
                         "reliable": [False, True], "note": ["heavy tail: ...", ""]},
                        index=["exp(-delta_H)", "delta_H_identity(K=2)"])
    check_summary(tail, "tail")
    with pytest.raises(AssertionError, match="delta_H_identity.* pull -4.50"):
        check_summary(tail.assign(mean=[0.869, 0.9595], pull=[-5.7, -4.5]), "identity off")
    with pytest.raises(AssertionError, match="exp\\(-delta_H\\) = 0.869"):
        check_summary(tail.assign(reliable=[True, True], note=["", ""]), "not marked")

"""The documentation runs: every Python example in ``docs/*.md`` and ``README.md``, and the spec reference.

For each Markdown file, the fenced code blocks are taken in order and run in one namespace per file, in a
fresh temporary working directory (which is also put on ``sys.path``). The info string after the opening
fence says what happens to a block:

- ```` ```python ````: executed.
- ```` ```python no-run ````: shown only, never executed. For examples too long for the test suite (the
  README's 64-chain run and 10-minute training); say in the text around it what it would do.
- ```` ```python requires=MODULE ````: executed if ``MODULE`` can be imported (``matplotlib`` for a
  figure), skipped otherwise; later blocks must not depend on it.
- ```` ```LANGUAGE file=NAME ````: written to ``NAME`` in the working directory instead of being executed:
  a plugin's module (``python file=my_plugin.py``, which entry points name as ``my_plugin:Class``) or a
  spec file (``toml file=spec.toml``) that later blocks read.
- ```` ```toml pyproject ````: a package's ``pyproject.toml``. Its ``[project.entry-points."lattice_flows.*"]``
  tables are registered, for the rest of the file, as if that package were installed: the entry points are
  faked exactly as the ``toy_plugins`` fixture of conftest.py does (``fake_entry_points``).

Any other block (``bash``, ``toml``, ``text``, ...) is not run. A ``python`` block with another marker is
an error, so a misspelt ``no-run`` cannot silently skip an example.

``docs/spec-reference.md`` must equal :func:`lattice_flows.reference.spec_reference_markdown` for the
components of this package; regenerate it with ``python -m lattice_flows.reference > docs/spec-reference.md``
(add ``--package lattice-flows`` where other packages register components too).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import entrypoints
import pytest
import torch

import lattice_flows
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


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_examples_run(path, tmp_path, monkeypatch, fake_entry_points):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures are written to files, never shown
    modules_before = set(sys.modules)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the examples' tensors are tiny: one thread is faster, and unhurt by a busy machine
    namespace: dict = {"__name__": "__docs__"}
    relative = path.relative_to(ROOT).as_posix()
    try:
        for line, info, code in code_blocks(path.read_text()):
            where = f"{relative}:{line}"
            words = info.split()
            language, markers = (words[0], words[1:]) if words else ("", [])
            if language == "toml" and markers == ["pyproject"]:
                _register_pyproject(code, where, fake_entry_points)
                continue
            if len(markers) == 1 and markers[0].startswith("file="):
                (tmp_path / markers[0][len("file=") :]).write_text(code)
                importlib.invalidate_caches()
                continue
            if language != "python" or markers == ["no-run"]:
                continue
            if len(markers) == 1 and markers[0].startswith("requires="):
                if importlib.util.find_spec(markers[0][len("requires=") :]) is None:
                    continue
            else:
                assert not markers, f"{where}: unknown marker {' '.join(markers)!r} on a python block; see tests/test_docs.py"
            exec(compile(code, where, "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        for name in set(sys.modules) - modules_before:  # the plugin modules written from the document
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(str(tmp_path)):
                del sys.modules[name]


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

"""The package's import graph is layered (``benchmarks/import_graph.py``): no cycle, no upward import, no
function-level import of an own module, every module with a layer that ``docs/architecture.md`` names."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph():
    return load_benchmark("import_graph")


def test_the_tree_is_layered(graph, capsys):
    assert graph.main([]) == 0
    out = capsys.readouterr().out
    assert "no cycle, no upward import, no function-level import of an own module" in out
    for module in ("spec", "base", "registry", "simulation", "cli"):
        assert re.search(rf"^  {module} +\d+  imports ", out, re.M), module


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "lattice_flows"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_a_cycle_an_upward_and_a_function_level_import_are_each_found(graph, tmp_path, capsys):
    root = _package(tmp_path, {
        "errors.py": "from .params import integer\n",  # foundation -> foundation, but params imports errors: a cycle
        "params.py": "from . import errors\n",
        "spec.py": "def build():\n    from .registry import ACTIONS\n",  # function level, and upward
        "kinds.py": "import matplotlib\n",  # an optional package at module level
        "registry.py": "",
        "newcomer.py": "",  # no layer
    })
    assert graph.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "import cycle: errors -> params -> errors" in out
    assert "spec imports registry inside a function" in out
    assert "spec (layer 1, spec) imports registry (layer 3, plugins): an upward import" in out
    assert "kinds imports the optional matplotlib at module level" in out
    assert "newcomer: has no layer" in out


def test_relative_imports_of_a_subpackage_resolve_to_its_modules(graph, tmp_path, capsys):
    root = _package(tmp_path, {
        "base.py": "",
        "testing/__init__.py": "from .actions import check_action\n",
        "testing/actions.py": "from ..base import Action\nfrom .. import cli\n",  # cli is a layer above testing
        "cli.py": "",
    })
    assert graph.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^  testing +\d+  imports testing.actions$", out, re.M)
    assert "testing.actions (layer 7, reports) imports cli (layer 8, entry points): an upward import" in out


def test_the_architecture_doc_names_every_module_of_the_layers(graph):
    text = (ROOT / "docs" / "architecture.md").read_text()
    present = {p.stem if p.name != "__init__.py" else p.parent.name for p in (ROOT / "lattice_flows").glob("*.py")}
    present |= {p.name for p in (ROOT / "lattice_flows").iterdir() if (p / "__init__.py").exists()}
    for layer, _, modules in graph.LAYERS:
        assert f"**{layer}**" in text, layer
        for module in modules:
            if module in present and module not in ("__init__", "__main__"):
                assert f"`{module}`" in text, f"docs/architecture.md does not name the module {module}"


def test_a_plugin_importing_beyond_the_public_core_is_found(graph, tmp_path, capsys):
    root = _package(tmp_path, {"base.py": "", "chain_driver.py": "", "simulation.py": ""})
    plugins = tmp_path / "plugins" / "my_plugin"
    plugins.mkdir(parents=True)
    (plugins / "action.py").write_text("from lattice_flows import Action\nfrom lattice_flows.base import Component\n")
    (plugins / "sampler.py").write_text("from lattice_flows.chain_driver import drive_chains\n")
    assert graph.main(["--root", str(root), "--plugins", str(tmp_path / "plugins")]) == 1
    out = capsys.readouterr().out
    assert "plugins (2 files under plugins/) import from the core: __init__, base, chain_driver" in out
    assert "sampler.py:1: a plugin imports the core module chain_driver, which is not public to plugins" in out
    assert "action.py" not in out.split("problem(s):")[1]

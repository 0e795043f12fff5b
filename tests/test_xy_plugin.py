"""The XY plugin, ``plugins/lattice-flows-xy``, as this repository sees it: a separately installable package.

The package's own tests (its action, observables, exact values and flow, and lattice-flows' contract kit
run on them) are in ``plugins/lattice-flows-xy/tests``, which the README's test command runs too. Here:
that the registries show exactly the entry points of its ``pyproject.toml``, that a spec naming it runs,
and that the plugin guide's worked example runs.

How it is registered here. If the package is installed (``pip install -e plugins/lattice-flows-xy``),
its entry points are visible already and are used as they are. Otherwise :func:`register` does what
installing would: it puts the package's folder on ``sys.path`` and adds the entry points declared in the
package's own ``pyproject.toml`` to what :mod:`lattice_flows.registry` reads (as the
``fake_entry_points`` fixture of conftest.py does), for this module's tests only.
"""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from pathlib import Path

import entrypoints
import pytest
import torch

import lattice_flows
from lattice_flows import ACTIONS, FLOWS, Simulation
from lattice_flows import registry as registry_module

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugins" / "lattice-flows-xy"
PYPROJECT = tomllib.loads((PLUGIN / "pyproject.toml").read_text())
REGISTRY_OF_GROUP = {r.group: r for r in lattice_flows.REGISTRIES.values()}


def declared_entry_points() -> dict[str, dict[str, str]]:
    """``{group: {name: "module:object"}}`` of the ``lattice_flows.*`` groups in the plugin's pyproject.toml."""
    groups = PYPROJECT["project"]["entry-points"]
    return {group: dict(entries) for group, entries in groups.items() if group.startswith("lattice_flows.")}


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "_", distribution).lower()


def _distribution_name() -> str:
    # Spelt as installed metadata spells it (lattice_flows_xy-0.1.0.dist-info, lattice_flows_xy.egg-info),
    # so that the registry takes a leftover egg-info in the folder for the same distribution, not a duplicate.
    return _normalized(PYPROJECT["project"]["name"])


def is_installed() -> bool:
    """Whether the entry points of an installed lattice-flows-xy are visible."""
    actions = entrypoints.get_group_all("lattice_flows.actions")
    return any(ep.name == "xy" and ep.module_name == "lattice_flows_xy.action" for ep in actions)


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the plugin's components available as an installed package's would be (a no-op if it is)."""
    if not is_installed():
        monkeypatch.syspath_prepend(str(PLUGIN))
        dist = entrypoints.Distribution(_distribution_name(), PYPROJECT["project"]["version"])
        extra = {
            group: [entrypoints.EntryPoint.from_string(target, name, distro=dist) for name, target in entries.items()]
            for group, entries in declared_entry_points().items()
        }
        real = registry_module._entry_points
        monkeypatch.setattr(registry_module, "_entry_points", lambda group: real(group) + extra.get(group, []))
    for registry in lattice_flows.REGISTRIES.values():
        registry.reload()


@pytest.fixture(scope="module", autouse=True)
def xy_plugin():
    installed = is_installed()
    monkeypatch = pytest.MonkeyPatch()
    register(monkeypatch)
    yield
    monkeypatch.undo()
    for registry in lattice_flows.REGISTRIES.values():
        registry.reload()
    if not installed:  # forget the modules imported from the folder, as if nothing had been installed
        for name in [n for n in sys.modules if n == "lattice_flows_xy" or n.startswith("lattice_flows_xy.")]:
            del sys.modules[name]


# -- packaging and registration -----------------------------------------------------------------


def test_registry_shows_the_entry_points_of_the_pyproject():
    declared = declared_entry_points()
    assert set(declared) == {"lattice_flows.actions", "lattice_flows.observables", "lattice_flows.flows"}
    for group, entries in declared.items():
        registry = REGISTRY_OF_GROUP[group]
        for name, target in entries.items():
            entry = registry.entries()[name]
            module, obj = target.split(":")
            assert entry.target == target
            assert entry.cls is getattr(importlib.import_module(module), obj)
            assert _normalized(entry.distribution.split()[0]) == "lattice_flows_xy"
        # and nothing else comes from the package
        ours = {n for n, e in registry.entries().items() if _normalized(e.distribution.split()[0]) == "lattice_flows_xy"}
        assert ours == set(entries)
    assert ACTIONS.get("xy").theory == "xy" and FLOWS.get("xy_mobius").theory == "xy"


def test_a_spec_naming_the_plugin_runs_with_its_observables():
    spec = {
        "lattice": {"shape": [4, 4]},
        "action": {"name": "xy", "beta": 0.5},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}},
        "n_chains": 2, "n_thermalization": 2, "n_trajectories": 3,
    }
    sim = Simulation.from_spec(spec)
    assert Simulation.from_spec(sim.to_spec()) == sim
    table = sim.run()
    observables = ["helicity_modulus", "vortex_density", "xy_energy", "xy_magnetization_squared"]
    assert list(table.columns) == ["chain", "trajectory", "accepted", "delta_H", *observables]
    assert len(table) == 6
    assert set(sim.summary(table).index) >= set(observables)


# -- the plugin guide's worked example ----------------------------------------------------------

SECTION = "## A worked example: the XY model as a package"


def test_plugin_guide_example_runs(tmp_path, monkeypatch):
    """The blocks of the guide's XY section. ``test_docs.py`` runs them too when the package is installed
    (they are marked ``requires=lattice_flows_xy``); here they run either way, with the plugin registered."""
    from test_docs import code_blocks

    text = (ROOT / "docs" / "plugins.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end >= 0 else len(text)]
    blocks = code_blocks(section)
    # the pyproject shown is the package's own, and the code shown is quoted from the package
    shown = [tomllib.loads(code) for _, info, code in blocks if info == "toml" and "[project]" in code]
    assert shown == [PYPROJECT]
    sources = "".join(path.read_text() for path in sorted((PLUGIN / "lattice_flows_xy").glob("*.py")))
    quoted = [code for _, info, code in blocks if info == "python no-run" and "class " in code]
    assert len(quoted) == 2 and all(code in sources for code in quoted)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    try:
        for line, info, code in blocks:
            words = info.split()
            if len(words) == 2 and words[1].startswith("file="):
                (tmp_path / words[1][len("file=") :]).write_text(code)
            elif words[:1] == ["python"] and words[1:] in ([], ["requires=lattice_flows_xy"]):
                exec(compile(code, f"docs/plugins.md (XY section):{line}", "exec"), namespace)
                ran += 1
    finally:
        torch.set_num_threads(threads)
    assert ran >= 2

"""Test set-up of the lattice-flows-xy package: the contract kit's options and fixtures, and the package itself.

``--device`` and ``--dtype`` (and the ``device``, ``dtype`` and ``tol`` fixtures) come from the kit's pytest
plugin, as for any plugin's tests. If the package is not installed, its folder is put on ``sys.path`` so that
its modules import, and the ``xy_registered`` fixture adds the entry points of its ``pyproject.toml`` to
what the registries read, for the tests that name its components in a spec.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from pathlib import Path

import entrypoints
import pytest
import torch

pytest_plugins = ["lattice_flows.testing.pytest_plugin"]

PACKAGE = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((PACKAGE / "pyproject.toml").read_text())

if importlib.util.find_spec("lattice_flows_xy") is None:
    sys.path.insert(0, str(PACKAGE))


def pytest_configure(config):
    # Tiny tensors: one thread is fastest, and far faster on a shared machine (as in lattice-flows' own tests).
    torch.set_num_threads(int(os.environ.get("LATTICE_FLOWS_TEST_THREADS", "1")))


def _installed() -> bool:
    return any(ep.name == "xy" and ep.module_name == "lattice_flows_xy.action"
               for ep in entrypoints.get_group_all("lattice_flows.actions"))


@pytest.fixture(scope="module")
def xy_registered():
    """The package's components in the registries: as installed, or from its pyproject.toml if it is not."""
    import lattice_flows
    from lattice_flows import registry

    monkeypatch = pytest.MonkeyPatch()
    if not _installed():
        dist = entrypoints.Distribution("lattice_flows_xy", PYPROJECT["project"]["version"])
        extra = {
            group: [entrypoints.EntryPoint.from_string(target, name, distro=dist) for name, target in entries.items()]
            for group, entries in PYPROJECT["project"]["entry-points"].items()
        }
        real = registry._entry_points
        monkeypatch.setattr(registry, "_entry_points", lambda group: real(group) + extra.get(group, []))
    for r in lattice_flows.REGISTRIES.values():
        r.reload()
    yield
    monkeypatch.undo()
    for r in lattice_flows.REGISTRIES.values():
        r.reload()

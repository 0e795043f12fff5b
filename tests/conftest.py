"""Test options and fixtures: ``--device`` and ``--dtype`` for the tensors the tests make, seeds for all.

Property tests run on CUDA when a GPU is present (``--device cuda`` is the default there) and on
the CPU otherwise; ``--dtype float32`` reruns them in single precision with looser tolerances. The two
options and the ``device``, ``dtype`` and ``tol`` fixtures come from the contract kit's pytest plugin,
:mod:`lattice_flows.testing.pytest_plugin`.
"""

from __future__ import annotations

import os
import platform
import random

# The regression fingerprints (tests/regression_specs.py) are bit-for-bit CPU results, and torch's vectorized CPU
# kernels give different float32 bits at different instruction sets (AVX2 and AVX-512 machines both run CI). Fix
# the kernels to AVX2 on x86-64, as the fingerprints were recorded, before torch picks its own.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# --device, --dtype and the device, dtype and tol fixtures, as a plugin's tests get them from the kit.
pytest_plugins = ["lattice_flows.testing.pytest_plugin"]

settings.register_profile(
    "default",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    # The tests' tensors are tiny: one CPU thread is as fast as several on an idle machine, and many
    # times faster on a shared, busy one (threads waiting for a busy core). LATTICE_FLOWS_TEST_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("LATTICE_FLOWS_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Add entry points, as another installed distribution would, for the duration of a test.

    Yields a dict ``{group: [EntryPoint, ...]}`` to fill; the registries are re-read around the test.
    """
    import lattice_flows
    from lattice_flows import registry as registry_module

    extra: dict[str, list] = {}
    real_entry_points = registry_module._entry_points
    monkeypatch.setattr(registry_module, "_entry_points", lambda group: real_entry_points(group) + extra.get(group, []))
    for registry in lattice_flows.REGISTRIES.values():
        registry.reload()
    yield extra
    for registry in lattice_flows.REGISTRIES.values():
        registry.reload()


@pytest.fixture
def toy_plugins(fake_entry_points):
    """The plugins of tests/toy_plugins.py (a Gaussian theory and an affine flow), registered."""
    import toy_plugins as module

    fake_entry_points.update(module.entry_points())
    return module


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary folder made the working directory (the CLI writes ``runs/`` there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path

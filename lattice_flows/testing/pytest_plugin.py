"""A pytest plugin with the options and fixtures that run the contract kit on the test device and dtype.

Load it from a ``conftest.py`` with ``pytest_plugins = ["lattice_flows.testing.pytest_plugin"]``. It adds

- ``--device`` (default ``cuda`` where a GPU is present, else ``cpu``) and ``--dtype`` (``float64`` or
  ``float32``);
- the session fixtures ``device`` (a ``torch.device``), ``dtype`` (a ``torch.dtype``) and ``tol``
  (:func:`lattice_flows.testing.tolerance` of the dtype).
"""

from __future__ import annotations

import pytest
import torch

from ._common import tolerance


def pytest_addoption(parser):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.addoption("--device", default=default_device, help=f"torch device for test tensors (default: {default_device})")
    parser.addoption("--dtype", default="float64", choices=["float64", "float32"], help="dtype for test tensors")


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return torch.device(pytestconfig.getoption("--device"))


@pytest.fixture(scope="session")
def dtype(pytestconfig) -> torch.dtype:
    return getattr(torch, pytestconfig.getoption("--dtype"))


@pytest.fixture(scope="session")
def tol(dtype) -> float:
    """Relative tolerance for round-off-level comparisons in the session's dtype."""
    return tolerance(dtype)

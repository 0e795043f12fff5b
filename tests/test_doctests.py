"""The examples in the core's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lattice_flows

MODULES = sorted(m.name for m in pkgutil.iter_modules(lattice_flows.__path__, "lattice_flows.") if m.name != "lattice_flows.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    failures, _ = doctest.testmod(importlib.import_module(name), raise_on_error=False, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_the_core_has_examples():
    attempted = sum(doctest.testmod(importlib.import_module(n), report=False).attempted for n in MODULES)
    assert attempted >= 6

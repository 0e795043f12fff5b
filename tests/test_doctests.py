"""The examples in the docstrings of the core and of the built-in plugins run and give what they show.

(The XY package runs its own, in ``plugins/lattice-flows-xy/tests``, with the same kit function.)
"""

from __future__ import annotations

import pytest

from lattice_flows import testing

PACKAGES = ["lattice_flows", "lattice_flows_u1", "lattice_flows_phi4", "lattice_flows_hmc"]
MODULES = [name for package in PACKAGES for name in testing.package_modules(package)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    testing.check_doctests(name)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_walked(package):
    assert package in MODULES and any(m.startswith(package + ".") for m in MODULES)


def test_the_core_and_the_plugins_have_examples():
    attempted = {p: sum(testing.check_doctests(m) for m in MODULES if m.split(".")[0] == p) for p in PACKAGES}
    assert attempted["lattice_flows"] >= 6, attempted
    assert sum(attempted.values()) > attempted["lattice_flows"], attempted

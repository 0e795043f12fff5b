"""The examples in a package's docstrings, run: :func:`check_doctests`."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

from ._common import ContractError

__all__ = ["package_modules", "check_doctests"]


def package_modules(package: str) -> list[str]:
    """The names of ``package`` and every module and subpackage under it, sorted (``__main__`` left out)."""
    root = importlib.import_module(package)
    names = [package]
    if hasattr(root, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.") if not m.name.endswith(".__main__")]
    return sorted(names)


def check_doctests(module: str, *, optionflags: int = doctest.ELLIPSIS) -> int:
    """Run the docstring examples of the module ``module`` (a dotted name); returns how many were tried.

    Raises :class:`~lattice_flows.testing.ContractError` naming the module and the failing examples.
    """
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=optionflags, verbose=False)
    mod = importlib.import_module(module)
    failed, attempted, report = 0, 0, []
    for test in finder.find(mod, module):
        result = runner.run(test, out=report.append)
        failed += result.failed
        attempted += result.attempted
    if failed:
        raise ContractError(module, "doctests", f"{failed} of {attempted} examples fail:\n" + "".join(report)[-4000:])
    return attempted

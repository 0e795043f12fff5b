"""Plugin registries: entry points, duplicates, bad targets, and a third party through the same door."""

from __future__ import annotations

import ast
import pathlib

import entrypoints
import pytest

from lattice_flows import ACTIONS, INTEGRATORS, OBSERVABLES, SAMPLERS, Simulation
from lattice_flows.errors import ComponentLoadError, DuplicateComponentError, SpecError, UnknownComponentError

ROOT = pathlib.Path(__file__).resolve().parents[1]


class NotAnAction:
    pass


def _ep(name, obj, distro="third-party-plugin"):
    """An entry point to an object of this module, declared by the distribution ``distro``."""
    return entrypoints.EntryPoint(name, __name__, obj, distro=entrypoints.Distribution(distro, "1.0"))


def test_builtins_are_found_through_entry_points():
    assert "u1_wilson" in ACTIONS.names()
    assert {"leapfrog", "omelyan"} <= set(INTEGRATORS.names())
    assert {"plaquette", "topological_charge", "action_density", "wilson_loop"} <= set(OBSERVABLES.names())
    assert {"hmc", "u1_exact"} <= set(SAMPLERS.names())
    entry = ACTIONS.entries()["u1_wilson"]
    assert entry.target == "lattice_flows_u1.action:U1Wilson"
    assert "lattice" in entry.distribution.replace("-", "_")


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownComponentError, match=r"unknown action 'u1_wilsn'; available actions: .*u1_wilson"):
        ACTIONS.get("u1_wilsn")


def test_third_party_plugin_runs_a_simulation(toy_plugins):
    assert ACTIONS.get("gaussian") is toy_plugins.GaussianAction
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": [3, 3]},
            "action": {"name": "gaussian", "sigma": 1.5},
            "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.3, "n_steps": 5}},
            "observables": [],
            "n_chains": 4,
            "n_thermalization": 10,
            "n_trajectories": 20,
        }
    )
    table = sim.run()
    assert len(table) == 80 and table["accepted"].mean() > 0.5
    # u1 observables refuse a gaussian theory, naming the theory and what fits it
    with pytest.raises(SpecError, match=r"measures u1 fields, but the action is a gaussian theory"):
        Simulation.from_spec({**sim.to_spec(), "observables": ["plaquette"]})


def test_two_distributions_registering_one_name_is_an_error(fake_entry_points):
    fake_entry_points["lattice_flows.actions"] = [_ep("u1_wilson", "NotAnAction")]
    with pytest.raises(DuplicateComponentError, match=r"'u1_wilson' is registered twice.*third-party-plugin"):
        ACTIONS.get("u1_wilson")


def test_one_distribution_seen_twice_is_one_registration(fake_entry_points):
    fake_entry_points["lattice_flows.actions"] = [_ep("twice", "NotAnAction"), _ep("twice", "NotAnAction")]
    with pytest.raises(TypeError):  # loaded once (then rejected for its type), not a duplicate
        ACTIONS.get("twice")


def test_entry_point_of_the_wrong_type_is_a_type_error(fake_entry_points):
    fake_entry_points["lattice_flows.actions"] = [_ep("broken", "NotAnAction")]
    with pytest.raises(TypeError, match=r"'broken'.*not a subclass of lattice_flows.base.Action"):
        ACTIONS.get("broken")
    assert ACTIONS.get("u1_wilson")  # the other plugins still load


def test_entry_point_that_cannot_import_names_the_plugin(fake_entry_points):
    fake_entry_points["lattice_flows.samplers"] = [
        entrypoints.EntryPoint("ghost", "no_such_module_xyz", "Ghost", distro=entrypoints.Distribution("ghost-pkg", "0.1"))
    ]
    with pytest.raises(ComponentLoadError, match=r"cannot load sampler 'ghost'.*ghost-pkg.*no_such_module_xyz"):
        SAMPLERS.get("ghost")


def test_core_never_imports_a_plugin_package():
    for path in (ROOT / "lattice_flows").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(("lattice_flows_", "plugins")), f"{path} imports {name}"

"""lattice-flows' contract kit run on this package's components: the action, its observables, its flow, the
samplers and integrators of lattice-flows on the XY model, and the docstring examples.

The components are checked as classes, registered or not; device and dtype come from ``--device`` and
``--dtype`` (the kit's pytest plugin).
"""

from __future__ import annotations

import pytest

from lattice_flows import INTEGRATORS, SAMPLERS, testing
from lattice_flows_xy.action import XY
from lattice_flows_xy.flow import MobiusCouplingFlow
from lattice_flows_xy.observables import HelicityModulus, MagnetizationSquared, VortexDensity, XYEnergy

OBSERVABLES = [XYEnergy, HelicityModulus, VortexDensity, MagnetizationSquared]


@pytest.mark.parametrize("seed", [0, 1])
def test_action(seed, device, dtype):
    ran = testing.check_action(XY, lattice_shapes=[(4, 4), (3, 5), (2, 3, 4)], seed=seed, device=device, dtype=dtype)
    assert "period_invariance" in ran


@pytest.mark.parametrize("observable", OBSERVABLES, ids=lambda c: c.__name__)
def test_observable(observable, device, dtype):
    testing.check_observable(observable, XY, device=device, dtype=dtype)


def test_flow(device, dtype):
    assert testing.flow_lattices(MobiusCouplingFlow, XY)[:2] == [(4, 4), (6, 4)]  # even sizes
    ran = testing.check_flow(MobiusCouplingFlow, XY, params={"n_layers": 4}, device=device, dtype=dtype)
    assert "equivariant" not in ran  # a checkerboard does not commute with every translation
    assert "refuses_lattice" in ran


@pytest.mark.parametrize("integrator", INTEGRATORS.names())
def test_integrators_on_xy(integrator, device):
    testing.check_integrator(INTEGRATORS.get(integrator), actions=[XY(beta=0.8)], trajectories=[(5, 0.1)], device=device)


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_samplers_on_xy(sampler, device, dtype):
    """Every sampler of lattice-flows builds on XY, steps and is exact, or declares that it does not take XY."""
    cls = SAMPLERS.get(sampler)
    flow = None
    if testing.needs_flow(cls):
        flow = MobiusCouplingFlow(MobiusCouplingFlow.Config(n_layers=2), (4, 4))
        testing.check_sampler(cls, XY, flow=flow, exactness=False, device=device, dtype=dtype)
    ran = testing.check_sampler(cls, XY(beta=0.3), lattice_shape=(4, 3), observables=OBSERVABLES, device=device, dtype=dtype)
    assert ran[-1] == "exact" or ran == ["declared_incompatible"]


@pytest.mark.parametrize("module", testing.package_modules("lattice_flows_xy"))
def test_docstring_examples(module):
    testing.check_doctests(module)

"""lattice-flows: lattice field theory with HMC and normalizing flows, driven by plugins.

The core (this package) knows no theory. Theories, flows, integrators, observables and samplers
are plugins found through entry points (:mod:`lattice_flows.registry`); the built-in ones live in
the ``lattice_flows_u1`` and ``lattice_flows_hmc`` packages and are registered exactly as a third
party's would be.

Example::

    from lattice_flows import Simulation
    sim = Simulation.from_spec({
        "lattice": {"shape": [8, 8]},
        "action": {"name": "u1_wilson", "beta": 2.0},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}},
        "observables": ["plaquette", "topological_charge"],
        "n_chains": 8, "n_thermalization": 20, "n_trajectories": 100,
    })
    table = sim.run()
    print(sim.summary(table))
"""

from .base import Action, ChainState, Flow, Integrator, Observable, Sampler, SplitForce
from .errors import (
    ComponentLoadError,
    DuplicateComponentError,
    LatticeFlowsError,
    ParameterError,
    SpecError,
    UnknownComponentError,
)
from .registry import ACTIONS, FLOWS, INTEGRATORS, OBSERVABLES, SAMPLERS, REGISTRIES, Registry
from .simulation import Simulation
from .tables import concat_runs

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ChainState",
    "Flow",
    "Integrator",
    "Observable",
    "Sampler",
    "SplitForce",
    "Simulation",
    "concat_runs",
    "Registry",
    "ACTIONS",
    "FLOWS",
    "INTEGRATORS",
    "OBSERVABLES",
    "SAMPLERS",
    "REGISTRIES",
    "LatticeFlowsError",
    "SpecError",
    "ParameterError",
    "UnknownComponentError",
    "DuplicateComponentError",
    "ComponentLoadError",
]

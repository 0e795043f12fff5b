"""The contract kit: the checks every component must pass, as plain functions a plugin's tests can call.

Each ``check_*`` function builds what it needs from the component's ``example_params`` (or takes an
instance), runs its checks on the given device and dtype, raises :class:`ContractError` (an
``AssertionError``) naming the component, the check and the numbers, and returns the names of the checks
that ran. It works under pytest and outside it, and needs neither pytest nor hypothesis. Nothing in it
assumes a theory: lattices come from the component (:attr:`Action.dimensions`,
:attr:`Action.example_lattices`, :attr:`Flow.example_lattices`, :meth:`Flow.check_lattice`),
perturbations from :attr:`Action.period` and :meth:`Action.random_symmetry`, momenta from
:attr:`Action.phase_space`.

The checks (the names are those of the :class:`ContractError`\\ s and of the returned lists):

- :func:`check_action`: ``field_shape``, ``shape_device_dtype``, ``symmetry_invariance``,
  ``normalize_invariance``, ``period_invariance`` (if the action has a ``period``), ``batch_independence``
  (action and force), ``force_matches_autograd``, ``prior_reproducible`` (and ``cold_start``'s shape and dtype);
- :func:`check_integrator`: ``reversible`` (whole and split anharmonic force), ``inputs_unchanged``,
  ``reversible_on_action`` (each given action's force, momenta from its phase space), ``error_order`` (harmonic
  oscillator), ``force_evaluations``;
- :func:`check_observable`: ``theory``, ``applies_to``, ``shape_device``, ``batch_independence``,
  ``symmetry_invariance`` (if ``invariant``), ``period_invariance`` (if the action has a ``period``); for a
  ``stochastic`` observable ``reproducible`` and ``own_generator`` instead of the last three
  (:func:`observable_applies`: the pairs the kit checks);
- :func:`check_flow`: ``theory``, ``inverse`` (round-off, log-determinants cancel), ``logdet_matches_jacobian``
  (autograd Jacobian), ``equivariant`` (if declared), ``starts_near_identity`` (dtype and device too),
  ``gradients`` (every parameter), ``state_dict_transfers`` (to other lattice sizes), ``refuses_lattice``
  (a clear error naming the size), ``spec_round_trip``;
- :func:`check_sampler`: ``declared_incompatible`` (a declared pair must be refused) or ``builds`` (any
  other pair must build and be accepted), ``step_contract``, ``reproducible``, ``exact``
  (``<exp(-delta_H)> = 1`` and the observables' exact values within standard errors);
- :func:`check_doctests`: a module's docstring examples.

A plugin's test, for example::

    from lattice_flows import testing
    from my_package import MyAction, MyObservable

    def test_my_action():
        testing.check_action(MyAction, device="cpu")
        testing.check_observable(MyObservable, MyAction)

:mod:`lattice_flows.testing.pytest_plugin` adds ``--device`` and ``--dtype`` options and fixtures to run
them on a GPU or in float32.

>>> from lattice_flows import INTEGRATORS
>>> check_integrator(INTEGRATORS.get("leapfrog"))
['reversible', 'inputs_unchanged', 'error_order', 'force_evaluations']
"""

from ._common import ContractError, action_lattices, component_name, test_fields, tolerance
from .actions import check_action
from .doctests import check_doctests, package_modules
from .flows import IdentityFlow, check_flow, flow_lattices, identity_flow, randomize, refused_lattice
from .integrators import ANHARMONIC_FORCES, anharmonic_force, check_integrator
from .observables import check_observable, observable_applies
from .samplers import check_sampler, declares_incompatible, needs_flow

__all__ = [
    "ContractError",
    "check_action",
    "check_integrator",
    "check_observable",
    "observable_applies",
    "check_flow",
    "check_sampler",
    "check_doctests",
    "action_lattices",
    "flow_lattices",
    "refused_lattice",
    "test_fields",
    "tolerance",
    "component_name",
    "randomize",
    "identity_flow",
    "IdentityFlow",
    "declares_incompatible",
    "needs_flow",
    "package_modules",
    "anharmonic_force",
    "ANHARMONIC_FORCES",
]

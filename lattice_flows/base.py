"""The abstract base classes every plugin subclasses: Action, Flow, Integrator, Observable, Sampler.

Shapes are a contract: a batch of fields is a tensor ``(B, *field_shape)`` (for U(1) gauge
fields the link angles ``(B, D, L_0, ..., L_{D-1})``); actions, observables and log-densities
return ``(B,)``. Components make new tensors from their inputs, so device and dtype follow the data.

Every component except flows is a frozen attrs class whose fields, declared with the helpers of
:mod:`lattice_flows.params`, are its spec parameters; :meth:`Component.from_spec` builds one from a
spec section and :meth:`Component.to_spec` gives the section back.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, Callable, ClassVar, Mapping, Sequence

import attrs
import torch
from torch import Tensor, nn

from .forces import SplitForce, autograd_force  # defined there, re-exported here for old imports
from .params import integer, real
from .phase_space import FLAT, FlatPhaseSpace, PhaseSpace
from .spec import build_from_params, params_of

__all__ = ["autograd_force", "SplitForce", "Component", "Action", "Flow", "Integrator", "Observable", "Sampler", "ChainState"]


class Component(abc.ABC):
    """Something built from a spec section. Subclasses are ``@attrs.frozen(kw_only=True)`` classes."""

    #: Parameters that build a typical instance; used by the contract tests and the docs.
    example_params: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], *, name: str, path: str, context: Mapping[str, Any]):
        """Build from the parameters of a spec section (the section without its ``name`` key).

        ``context`` holds what the simulation injects (``action``, ``lattice_shape``). Every key
        must be consumed: an unknown key, a missing one or a bad value raises :class:`SpecError`
        naming ``path``. Components that are not plain attrs classes override this.
        """
        return build_from_params(cls, params, what=name, path=path, context=context)

    def to_spec(self) -> dict[str, Any]:
        """The spec parameters of this instance (without ``name``); nested components as sections."""
        return params_of(self)


class Action(Component):
    """A lattice action ``S[x]``; the target density is ``exp(-S)``."""

    #: Name of the theory whose fields this action acts on; observables declare the same name.
    theory: ClassVar[str]
    #: Numbers of lattice dimensions it supports (``None``: any); used to draw test lattices.
    dimensions: ClassVar[tuple[int, ...] | None] = None
    #: Momenta, kinetic energy and position update of its fields (:mod:`lattice_flows.phase_space`);
    #: flat by default. Integrators and samplers go through it; :meth:`force` is in its momentum coordinates.
    phase_space: ClassVar[PhaseSpace] = FLAT
    #: Lattice shapes the contract kit (:mod:`lattice_flows.testing`) checks it on; empty: a side-4 hypercube
    #: and an uneven lattice (sides 3, 4, ...) for each of :attr:`dimensions`.
    example_lattices: ClassVar[tuple[tuple[int, ...], ...]] = ()
    #: The period of every field entry, if the field is defined modulo one (``2 pi`` for angles): ``S`` and
    #: the observables are unchanged by ``x -> x + period * k``, integer ``k``; the contract kit checks it.
    period: ClassVar[float | None] = None
    #: Whether ``__call__`` costs far more than its samplers' updates do (a dense determinant where the samplers
    #: integrate pseudofermions, say). A run's default observables then leave out those that evaluate the action
    #: (:attr:`Observable.evaluates_action`); a spec may still name them.
    expensive_call: ClassVar[bool] = False

    @abc.abstractmethod
    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one field configuration on this lattice, e.g. ``(2, L_0, L_1)`` for 2D U(1).

        Raises ``ValueError`` (with the shape and what is supported) for a lattice it cannot handle.
        """

    @abc.abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """``S`` per configuration: ``x`` of shape ``(B, *field_shape)`` -> ``(B,)``."""

    def force(self, x: Tensor) -> Tensor:
        """The force in the momentum coordinates of :attr:`phase_space`: ``dS/dx``, same shape as ``x``, on a
        flat space. Autograd by default (through the phase space's ``gradient_to_force``, the identity on a
        flat space); override with the analytic form."""
        return self.phase_space.gradient_to_force(x, autograd_force(self, x))

    def refresh(self, x: Tensor, generator: torch.Generator) -> "Action":
        """The action of one trajectory: auxiliary fields drawn once, from their density given the fields ``x``.

        An action with auxiliary fields ``phi`` (pseudofermions ``phi = D^dag eta``) has the joint density
        ``exp(-S(x, phi))``; ``__call__`` is then the marginal action of ``x`` where it can be computed. The
        samplers call ``refresh`` once per update with the chains' current ``x`` ``(B, *field_shape)`` and the
        run's generator, and use what it returns, ``S(., phi)`` with ``phi ~ p(phi | x)`` held fixed, for the
        Hamiltonian, the force and the Metropolis test of that update (a Gibbs step on ``phi``, then one on
        ``x``: exact for the marginal). What it returns needs ``__call__``, ``force`` and :meth:`statistics`
        (an instance of the action's class, or a small class of its own); the phase space and ``normalize``
        stay the action's. Default: ``self``, no auxiliary field, no random number drawn.
        """
        return self

    def statistics(self) -> dict[str, Tensor]:
        """Per-chain work of this action since :meth:`refresh` made it: ``{name: (B,) tensor}``, e.g. the solver
        iterations of a pseudofermion force. The samplers add each as the table column ``action.<name>``
        (a prefix that keeps it apart from the observables' columns and ``accepted``/``delta_H``); empty by
        default (no column)."""
        return {}

    @abc.abstractmethod
    def sample_prior(
        self, n: int, lattice_shape: Sequence[int], *, generator: torch.Generator, dtype: torch.dtype, device
    ) -> Tensor:
        """``n`` fields from the theory's simple prior (Haar/uniform for gauge links, normal for scalars).

        Used for hot starts and as the base distribution of flows. Shape ``(n, *field_shape)``.
        """

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log r(x)`` of the prior that :meth:`sample_prior` draws from, ``(B,)``; flows need it."""
        raise NotImplementedError(f"{type(self).__name__} defines no prior density, so flows cannot use it")

    def cold_start(self, n: int, lattice_shape: Sequence[int], *, dtype: torch.dtype, device) -> Tensor:
        """``n`` ordered fields (all zeros unless overridden), shape ``(n, *field_shape)``."""
        return torch.zeros((n, *self.field_shape(lattice_shape)), dtype=dtype, device=device)

    def normalize(self, x: Tensor) -> Tensor:
        """``x`` mapped to its canonical representative (angles folded into ``[-pi, pi)``). Identity by default."""
        return x

    @abc.abstractmethod
    def random_symmetry(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x`` under a random symmetry of the action (a gauge transformation for gauge theories).

        The contract tests check that ``S`` and the theory's invariant observables do not change.
        """


class Flow(nn.Module, abc.ABC):
    """An invertible map ``f: z -> x`` with a tractable log-Jacobian (a normalizing flow).

    ``forward(z) -> (x, logdet)`` with ``logdet = log|det dx/dz|`` and ``inverse(x) -> (z, logdet)``
    with ``logdet = log|det dz/dx|``, both of shape ``(B,)``; ``z`` and ``x`` have the field shape of
    the theory, ``(B, *field_shape)``.

    A flow is an ``nn.Module``, so its spec parameters live in a separate frozen attrs class,
    ``Config`` (fields declared with :mod:`lattice_flows.params`); the flow is built as
    ``cls(config, lattice_shape)``. Weights must not depend on the lattice size (convolutions with
    circular padding), so a ``state_dict`` trained on one lattice loads on another: anything that
    depends on the size (masks) is a non-persistent buffer.
    """

    #: The spec parameters: a frozen attrs class.
    Config: ClassVar[type]
    #: The theory whose fields it transforms (see :attr:`Action.theory`).
    theory: ClassVar[str]
    #: Whether ``f(g z) = g f(z)`` for the action's symmetries (:meth:`Action.random_symmetry`); tested.
    equivariant: ClassVar[bool] = True
    #: Parameters that build a small, typical instance; used by the contract tests and the docs.
    example_params: ClassVar[Mapping[str, Any]] = {}
    #: Lattice shapes the contract kit checks it on; empty: the smallest that :meth:`check_lattice` accepts
    #: among the action's test lattices with sides multiplied by 1 to 4 (:func:`lattice_flows.testing.flow_lattices`).
    example_lattices: ClassVar[tuple[tuple[int, ...], ...]] = ()

    def __init__(self, config: Any, lattice_shape: Sequence[int]):
        super().__init__()
        self.config = config
        self.lattice_shape = tuple(lattice_shape)

    @classmethod
    def check_lattice(cls, lattice_shape: Sequence[int]) -> None:
        """Raise ``ValueError`` (with the shape and what is supported) if the flow cannot act on it."""

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], *, name: str, path: str, context: Mapping[str, Any]):
        """Build from a spec section's parameters, for the lattice in ``context["lattice_shape"]``."""
        config = build_from_params(cls.Config, params, what=name, path=path, context=context)
        return cls(config, context["lattice_shape"])

    def to_spec(self) -> dict[str, Any]:
        """The spec parameters of this flow (without ``name``)."""
        return params_of(self.config)

    @abc.abstractmethod
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dz|)``."""

    @abc.abstractmethod
    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dx|)``."""


@attrs.frozen(kw_only=True)
class Integrator(Component):
    """A symplectic, reversible integrator of Hamilton's equations for ``H = K(v) + S(x)``.

    ``dx/dt = dK/dv`` and ``dv/dt = -F(x)``, through the action's phase space
    (:mod:`lattice_flows.phase_space`): its ``update_position`` moves ``x``, the momenta ``v`` and the
    force ``F`` share its momentum coordinates. On the default flat space (unit masses) ``K = sum v^2 / 2``
    and ``x <- x + eps v``.
    """

    #: Order of the global error; the energy error per trajectory falls as ``step_size**order``.
    order: ClassVar[int] = 2

    step_size: float = real(help="molecular-dynamics step size (in units of the trajectory time)", gt=0.0)
    n_steps: int = integer(help="number of integration steps per trajectory", ge=1)

    @abc.abstractmethod
    def integrate(
        self, x: Tensor, v: Tensor, force: Callable[[Tensor], Tensor], phase_space: PhaseSpace = FLAT
    ) -> tuple[Tensor, Tensor]:
        """Integrate ``n_steps`` steps from ``(x, v)``; returns the new ``(x, v)``, same shapes.

        ``force(x)`` returns the force in ``phase_space``'s momentum coordinates (``dS/dx`` on a flat space);
        it may be a :class:`SplitForce`. Positions move only by ``phase_space.update_position``, momenta by
        ``v -= c * F``. Reversible: integrating from ``(x', -v')`` returns ``(x, -v)``. An integrator written
        before phase spaces existed has no ``phase_space`` argument: it still runs on flat phase spaces
        (see :meth:`integrate_on`).
        """

    def integrate_on(
        self, x: Tensor, v: Tensor, force: Callable[[Tensor], Tensor], phase_space: PhaseSpace = FLAT
    ) -> tuple[Tensor, Tensor]:
        """:meth:`integrate` on ``phase_space``, as the samplers call it; an integrator whose ``integrate``
        takes no ``phase_space`` runs on a :class:`FlatPhaseSpace` only (any other raises ``TypeError``)."""
        if type(phase_space) is FlatPhaseSpace:
            return self.integrate(x, v, force)
        if "phase_space" not in inspect.signature(self.integrate).parameters:
            raise TypeError(
                f"{type(self).__name__}.integrate(x, v, force) takes no phase_space, so it can only integrate on a "
                f"flat phase space, got {phase_space!r}: add the argument phase_space=FLAT and move x with "
                "phase_space.update_position"
            )
        return self.integrate(x, v, force, phase_space)

    @property
    @abc.abstractmethod
    def force_evaluations(self) -> int:
        """Number of calls of ``force`` per trajectory (the cost unit of HMC)."""


class Observable(Component):
    """A measurement on a batch of fields: ``obs(x)`` with ``x`` of shape ``(B, *field_shape)`` -> ``(B,)``."""

    #: The theory whose fields it measures (see :attr:`Action.theory`).
    theory: ClassVar[str]
    #: Powers of the observable that the summary reports (``(1, 2)`` adds ``<O^2>``).
    moments: ClassVar[tuple[int, ...]] = (1,)
    #: Whether the value is unchanged by :meth:`Action.random_symmetry` (checked by the contract tests).
    invariant: ClassVar[bool] = True
    #: Whether it draws random numbers (a noise estimate of a trace, say). A stochastic observable is called
    #: ``obs(x, generator)`` with the run's *measurement* generator, never the sampler's (seeded from the run's
    #: seed with :data:`lattice_flows.run_settings.MEASUREMENT_SEED_OFFSET`, per rank, its state saved in the
    #: chains checkpoint): adding one to a spec does not change the chain, and a spec and seed give the same
    #: table, resumed or not. It must draw only from that generator.
    stochastic: ClassVar[bool] = False
    #: Whether it evaluates the run's action (``S / V``, say): left out of the default observables of an action
    #: whose call is expensive (:attr:`Action.expensive_call`).
    evaluates_action: ClassVar[bool] = False
    #: Whether it is the theory's slowest mode, the one whose ``tau_int`` sets what an independent sample costs (the
    #: topological charge of a gauge theory): ``lattice-flows compare`` (:mod:`lattice_flows.compare`) quotes its
    #: ``tau_int``, and without one the observable with the largest ``tau_int``.
    slow_mode: ClassVar[bool] = False

    @classmethod
    def applies_to(cls, action: "Action | type[Action]") -> bool:
        """Whether it measures fields of ``action`` (an instance or a class) meaningfully, beyond sharing its
        :attr:`theory`: ``True`` by default. An observable that needs more of the action than its theory (a
        fermion observable needs a fermion mass) narrows it; the default observables of a run leave out those
        that do not apply, a spec that names one is refused, and the contract kit pairs it only with the
        actions it applies to. :meth:`requirement` says what it needs, for the error."""
        return True

    @classmethod
    def requirement(cls) -> str:
        """What :meth:`applies_to` asks of an action, in words, for the error that refuses one ("an action
        with a fermion mass"); override it with :meth:`applies_to`."""
        return "an action it applies to (applies_to)"

    @abc.abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """The value per configuration, shape ``(B,)``; a :attr:`stochastic` observable is ``__call__(x, generator)``."""

    @classmethod
    def summary_rows(cls, table: "Any", columns: "Mapping[str, Observable]") -> "Any":
        """Summary rows derived from several columns of this class together (an effective mass from the columns
        of a correlator at neighbouring ``t``), or ``None`` (default).

        ``table``: the run table (pandas); ``columns``: every column of the run measured by an instance of this
        class, ``{column: observable}``. Returns ``None`` or a pandas DataFrame indexed by row name with any of
        the columns of :data:`lattice_flows.analysis.SUMMARY_COLUMNS` (at least ``mean``, ``error``,
        ``reliable``, ``note``); the summary appends its rows after the observables'. The core calls it once per
        class, so it stays theory-agnostic."""
        return None

    def exact(self) -> dict[int, float]:
        """Exact expectation values ``{power: <O^power>}`` where the theory has them; empty otherwise."""
        return {}

    def exact_distribution(self) -> dict[int, float]:
        """Exact probabilities ``{value: P(value)}`` of an integer-valued observable where the theory
        has them (the topological charge of 2D U(1), say); empty otherwise.

        Values with negligible probability may be left out, so the sum is 1 up to that truncation.
        """
        return {}


@attrs.frozen
class ChainState:
    """The state of a batch of Markov chains: ``x`` is the field measured, ``(B, *field_shape)``.

    Samplers that keep more (a latent field, a cached force) subclass it.
    """

    x: Tensor


class Sampler(Component):
    """A Markov-chain (or independent) sampler advancing ``B`` chains at once."""

    #: The theories it samples (``None``: any). Its :meth:`check_action` refuses the others; the contract kit
    #: checks that, and requires every other pairing with an action to build and pass.
    theories: ClassVar[tuple[str, ...] | None] = None
    #: Whether every update draws independent configurations from the exact target of each action it
    #: :meth:`applies_to` (no Markov chain), building from a spec section with its name alone:
    #: ``lattice-flows compare`` (:mod:`lattice_flows.compare`) starts every sampler from such draws.
    exact_independent: ClassVar[bool] = False

    @classmethod
    def applies_to(cls, action: "Action | type[Action]") -> bool:
        """Whether it is meant to sample ``action`` (an instance or a class): by default, whether the action's
        theory is among :attr:`theories`. A sampler that needs more than the theory (an exact sampler of one
        action) narrows it; :meth:`check_action` must refuse what this excludes, and the contract kit checks
        that and requires every other pairing to build and pass."""
        return cls.theories is None or action.theory in cls.theories

    def check_action(self, action: Action) -> None:
        """Raise ``ValueError`` if this sampler cannot sample ``action``'s theory. Accepts all by default."""

    def init(self, x: Tensor, action: Action) -> ChainState:
        """The chain state that starts at fields ``x`` of shape ``(B, *field_shape)``."""
        return ChainState(x=x)

    def adapt(self, info: dict[str, Tensor], iteration: int) -> "Sampler":
        """During thermalization only: a copy tuned on the last update's ``info`` (``self`` by default).

        The simulation stops adapting when measurements begin, so the measured chain stays exact.
        """
        return self

    def tuning_report(self, original: "Sampler") -> str | None:
        """After thermalization: a warning about what :meth:`adapt` did to ``original`` (the spec's sampler), or None.

        The simulation logs it as a warning; for example, a step size tuned so small that every update costs
        many times what the spec's does.
        """
        return None

    @abc.abstractmethod
    def step(
        self, state: ChainState, action: Action, generator: torch.Generator
    ) -> tuple[ChainState, dict[str, Tensor]]:
        """One update of every chain (one trajectory for HMC).

        Returns the new state and per-chain information, at least ``accepted`` (bool, ``(B,)``) and
        ``delta_H`` (``(B,)``, zero for samplers without a Hamiltonian); every entry becomes a column
        of the results table.
        """

"""Non-equilibrium MCMC: proposals carried from a cheap action to the target by a switching protocol, with the work as weight.

``nonequilibrium`` (Jarzynski, Phys. Rev. Lett. 78 (1997) 2690; as a Markov chain for lattice fields: Caselle,
Cellini, Nada, Panero, arXiv:2201.08862, and Bonanno, Nada, Vadacchino, arXiv:2402.06561, where it frees the
topological charge). It is the stochastic normalizing flow without learned layers: every step is a Monte Carlo
update, and the weight of a path is exact without any Jacobian.

The protocol runs through the actions ``S_k = (1 - l_k) S_prior + l_k S``, ``l_k = k / n_switch``
(:class:`InterpolatedAction`; for ``u1_wilson`` at two couplings, the Wilson action at the interpolated ``beta``).
One update of every chain:

1. the prior field ``y`` takes ``prior_updates`` HMC trajectories on ``S_prior`` (a ``p_prior``-reversible kernel):
   ``y'``;
2. from ``x_0 = y'``, for ``k = 1 .. n_switch``: the work gains ``S_k(x_{k-1}) - S_{k-1}(x_{k-1})``, then (for
   ``k < n_switch``) ``x_k`` is one HMC trajectory on ``S_k`` from ``x_{k-1}``, with its own Metropolis test
   (so each is reversible for ``exp(-S_k)``); the proposal is ``x' = x_{n_switch - 1}`` with work ``W'``;
3. accept ``(y', x', W')`` with probability ``min(1, exp(W - W'))``.

The chain of ``(y, x, W)`` has the stationary density ``p_prior(y) P(path | y) exp(-W)``, whose ``x``-marginal is
``exp(-S(x)) / Z`` (Crooks' relation, from the detailed balance of every step), whatever the protocol: a short
one lowers the acceptance, never the correctness. ``delta_H = W' - W``, so ``<exp(-delta_H)> = 1`` holds as for
HMC (``docs/equations.md``). The cost of one update is ``prior_updates + n_switch - 1`` trajectories.

:meth:`NonEquilibrium.switch` is where a subclass puts a deterministic map between the steps (its Jacobian in the
work): ``u1_nonequilibrium_transport`` (``lattice_flows_u1.nonequilibrium``) moves the plaquettes toward the next
coupling there.

Where topology freezes at the target's coupling, the prior at a smaller coupling moves it in a few trajectories,
the protocol carries it to the target, and the work reweights it exactly. Actions with auxiliary fields
(pseudofermions) are not supported yet: the work needs ``S(x)`` itself at every step.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, ChainState, Integrator, Sampler
from lattice_flows.params import component, integer

from .hmc import hamiltonian_trajectory, metropolis, select

__all__ = ["InterpolatedAction", "NonEquilibrium", "NonEquilibriumState"]


class InterpolatedAction:
    """``(1 - lam) prior + lam target``, as the integrators use an action: ``__call__`` ``(B,)`` and ``force``.

    The phase space and ``normalize`` are the target's (both actions act on the same fields)."""

    def __init__(self, prior: Action, target: Action, lam: float):
        self.prior, self.target, self.lam = prior, target, float(lam)
        self.phase_space = target.phase_space

    def __call__(self, x: Tensor) -> Tensor:
        if self.lam == 0.0:
            return self.prior(x)
        if self.lam == 1.0:
            return self.target(x)
        return (1.0 - self.lam) * self.prior(x) + self.lam * self.target(x)

    def force(self, x: Tensor) -> Tensor:
        if self.lam == 0.0:
            return self.prior.force(x)
        if self.lam == 1.0:
            return self.target.force(x)
        return (1.0 - self.lam) * self.prior.force(x) + self.lam * self.target.force(x)


@attrs.frozen
class NonEquilibriumState(ChainState):
    """``x`` (measured) is the end of the accepted path, ``y`` its start (a field of the prior), ``work`` its ``W`` ``(B,)``."""

    y: Tensor = None
    work: Tensor = None


def _has_auxiliary_fields(action) -> bool:
    """Whether ``action`` (an instance or a class) draws auxiliary fields in :meth:`Action.refresh`."""
    cls = action if isinstance(action, type) else type(action)
    return cls.refresh is not Action.refresh


@attrs.frozen(kw_only=True)
class NonEquilibrium(Sampler):
    """Non-equilibrium MCMC from ``prior`` to the run's action in ``n_switch`` steps; see the module docstring."""

    example_params = {"n_switch": 4, "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 5}}

    prior: Action | None = component(
        "actions",
        help="the action the protocol starts from, of the same theory as the run's (a smaller coupling, say); "
        "none: the run's action itself (no work: plain HMC, for tests)",
        default=None,
    )
    n_switch: int = integer(help="steps of the protocol from the prior to the target (the work has n_switch terms)", ge=1)
    prior_updates: int = integer(help="HMC trajectories on the prior per update, before each protocol", default=1, ge=1)
    integrator: Integrator = component("integrators", help="integrator of every HMC trajectory (prior and protocol)")

    @classmethod
    def applies_to(cls, action) -> bool:
        """Any action without auxiliary fields (the work needs ``S(x)`` itself)."""
        return not _has_auxiliary_fields(action)

    def check_action(self, action: Action) -> None:
        if self.prior is not None and action.theory != self.prior.theory:
            raise ValueError(
                f"nonequilibrium: the prior acts on theory {self.prior.theory!r} fields, the run's action on "
                f"{action.theory!r}: both must be of one theory"
            )
        for what, a in (("the run's action", action), ("the prior", self.prior)):
            if a is not None and _has_auxiliary_fields(a):
                raise ValueError(
                    f"nonequilibrium: {what} {type(a).__name__} has auxiliary fields (its refresh draws them); the "
                    "work needs the action itself at every step, which this sampler does not support yet"
                )

    def _trajectory(self, x: Tensor, action, phase_space, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One HMC trajectory with its Metropolis test on every chain: ``(x', accepted (B,))``."""
        x1, _, delta_H = hamiltonian_trajectory(self.integrator, x, phase_space.sample_momenta(x, generator), action, phase_space)
        accepted = metropolis(delta_H, generator)
        return select(accepted, x1, x), accepted

    def switch(self, k: int, x: Tensor, work: Tensor, current: InterpolatedAction, s_previous: Tensor) -> tuple[Tensor, Tensor]:
        """Step ``k`` of the protocol, where the action changes from ``S_{k-1}`` (its value at ``x``: ``s_previous``
        ``(B,)``) to ``current`` = ``S_k``: ``(x, work + S_k(x) - S_{k-1}(x))``, the fields unchanged. A subclass
        may move the fields here by an invertible map ``f`` and return ``(f(x), work + S_k(f(x)) - S_{k-1}(x) -
        log|det df/dx|)``: the weight stays exact (a stochastic normalizing flow with a deterministic layer)."""
        return x, work + current(x) - s_previous

    def propose(self, y: Tensor, action: Action, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From prior fields ``y`` ``(B, *field_shape)``: ``(y', x', W' (B,), mean acceptance of the protocol's
        trajectories (B,))`` (steps 1 and 2 of the module docstring)."""
        phase_space = action.phase_space
        prior = action if self.prior is None else self.prior
        for _ in range(self.prior_updates):
            y, _ = self._trajectory(y, prior, phase_space, generator)
            y = action.normalize(y)
        x, work = y, torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        accepted = torch.zeros_like(work)
        previous = InterpolatedAction(prior, action, 0.0)
        with torch.no_grad():
            s_previous = previous(x)
        for k in range(1, self.n_switch + 1):
            current = InterpolatedAction(prior, action, k / self.n_switch)
            with torch.no_grad():
                x, work = self.switch(k, x, work, current, s_previous)
            if k == self.n_switch:
                break
            x, acc = self._trajectory(x, current, phase_space, generator)
            x = action.normalize(x)
            accepted = accepted + acc.to(work.dtype)
            with torch.no_grad():
                s_previous = current(x)
        rate = accepted / max(self.n_switch - 1, 1)
        return y, x, work, rate

    def init(self, x: Tensor, action: Action) -> NonEquilibriumState:
        """Start the prior chain at ``x``, with no path yet (an infinite work): the first update takes its proposal
        (recording ``delta_H = 0``), and the thermalization updates forget the start."""
        return NonEquilibriumState(x=x, y=x, work=torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device))

    def step(self, state: NonEquilibriumState, action: Action, generator: torch.Generator):
        y1, x1, work1, rate = self.propose(state.y, action, generator)
        first = torch.isinf(state.work)  # no path yet (see init): take the first one, and record delta_H = 0
        delta_H = torch.where(first, torch.zeros_like(work1), work1 - state.work)
        accepted = metropolis(delta_H, generator) | first
        new = NonEquilibriumState(
            x=select(accepted, x1, state.x), y=select(accepted, y1, state.y), work=torch.where(accepted, work1, state.work)
        )
        return new, {"accepted": accepted, "delta_H": delta_H, "work": work1, "switch_acceptance": rate}

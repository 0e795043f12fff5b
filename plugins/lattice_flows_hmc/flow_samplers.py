"""Samplers that use a trained flow: field-transformation HMC and flow independence Metropolis.

- ``fthmc`` (Foreman et al. 2112.01586; Lüscher's trivializing maps): HMC in the flow's latent
  variable ``z`` with ``H(z, v) = K(v) + S(f(z)) - log|det J_f(z)|``, force by autograd through the
  flow; measurements on ``x = f(z)``. Exact for any invertible flow: a poor flow lowers the
  acceptance, never the correctness. The inverse is used only to start from given fields. The latent
  field lives on the field's manifold (a flow maps it to itself), so ``z`` moves in the action's phase space.
- ``flow_imh`` (Kanwar et al. 2003.06413): propose ``x' = f(z')``, ``z' ~ r``, accept with
  ``min(1, w(x') / w(x))``, ``w = exp(-S) / q``. Its ``delta_H`` is ``log w(x) - log w(x')``, so
  ``<exp(-delta_H)> = 1`` holds for it as for HMC.

Both draw the action's auxiliary fields once per update from the current ``x`` (:meth:`Action.refresh`):
FTHMC's latent action is then built on the refreshed action; flow_imh judges the proposal and the current
field with the same auxiliary field (a Gibbs step on it, then an independence step on ``x``, exact).
"""

from __future__ import annotations

import contextlib

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, ChainState, Flow, Integrator, Sampler
from lattice_flows.forces import SplitForce, autograd_force
from lattice_flows.params import choice, component, injected
from lattice_flows.phase_space import PhaseSpace

from .hmc import StepSizeTuning, metropolis, select, statistics_columns, target_acceptance, trajectory_length

__all__ = ["LatentAction", "FTHMC", "FlowIMH", "FlowChainState"]


@contextlib.contextmanager
def _frozen_weights(flow: Flow):
    """Sampling differentiates with respect to fields only: skip building gradients of the weights."""
    flags = [p.requires_grad for p in flow.parameters()]
    for p in flow.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(flow.parameters(), flags):
            p.requires_grad_(flag)


class LatentAction:
    """The action seen by the latent variable: ``S_f(z) = S(f(z)) - log|det J_f(z)|``, ``(B,)``.

    Behaves as an action for the integrators (``__call__`` and ``force``); the force is autograd
    through the flow, in the momentum coordinates of ``phase_space`` (default: the action's), and the
    action's own force is not used. ``action`` may be what :meth:`Action.refresh` returned.
    """

    def __init__(self, action: Action, flow: Flow, phase_space: PhaseSpace | None = None):
        self.action = action
        self.flow = flow
        self.phase_space = action.phase_space if phase_space is None else phase_space

    def __call__(self, z: Tensor) -> Tensor:
        x, logdet = self.flow(z)
        return self.action(x) - logdet

    def force(self, z: Tensor) -> Tensor:
        return self.phase_space.gradient_to_force(z, autograd_force(self, z))

    def correction_force(self, z: Tensor) -> Tensor:
        """Force of ``S_f(z) - S(z)``: what the flow adds to the action evaluated at ``z`` itself."""
        return self.force(z) - self.action.force(z)

    def split_force(self, fast: str):
        """The force for the integrator; ``fast`` names the part put on the fine time scale.

        - ``"all"``: one force, ``dS_f/dz`` (a nested integrator then puts all of it on the fine scale);
        - ``"action"``: fast ``dS/dz`` (the original action at ``z``, cheap), slow the flow's correction;
        - ``"flow"``: fast the flow's correction, slow ``dS/dz``.
        """
        if fast == "all":
            return self.force
        if fast == "action":
            return SplitForce(slow=self.correction_force, fast=self.action.force)
        if fast == "flow":
            return SplitForce(slow=self.action.force, fast=self.correction_force)
        raise ValueError(f"fast must be 'all', 'action' or 'flow', got {fast!r}")


@attrs.frozen
class FlowChainState(ChainState):
    """Chains that live in the flow's latent space: ``z`` is the chain, ``x = f(z)`` is measured."""

    z: Tensor = None
    #: ``log w = -S(x) - log q(x)`` of the current ``x`` (flow independence Metropolis only; for an action with
    #: auxiliary fields, ``S`` under the last update's auxiliary field).
    log_w: Tensor | None = None
    #: ``log q(x)`` of the current ``x``, the flow's density (flow independence Metropolis only).
    log_q: Tensor | None = None


@attrs.frozen(kw_only=True)
class FTHMC(StepSizeTuning, Sampler):
    """HMC on the flow's latent variable (field-transformation HMC)."""

    example_params = {"integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 5}}

    integrator: Integrator = component("integrators", help="molecular-dynamics integrator for the latent field")
    target_acceptance: float = target_acceptance()
    trajectory_length: float = trajectory_length()
    fast_force: str = choice(
        ("all", "action", "flow"),
        default="all",
        help=(
            "with a multi-timescale integrator (nested_leapfrog): which part of the latent force gets the fine "
            "steps; 'action' = the action at z (cheap), 'flow' = what the flow adds to it, 'all' = no split"
        ),
    )
    flow: Flow = injected("flow")

    @torch.no_grad()
    def init(self, x: Tensor, action: Action) -> FlowChainState:
        z, _ = self.flow.inverse(x)
        return FlowChainState(x=x, z=action.normalize(z))

    def step(self, state: FlowChainState, action: Action, generator: torch.Generator):
        z = state.z
        dynamics = action.refresh(state.x, generator)  # auxiliary fields drawn given the current x = f(z)
        phase_space = action.phase_space
        latent = LatentAction(dynamics, self.flow, phase_space)
        with _frozen_weights(self.flow):
            v = phase_space.sample_momenta(z, generator)
            h0 = phase_space.kinetic_energy(v) + latent(z)
            z1, v1 = self.integrator.integrate_on(z, v, latent.split_force(self.fast_force), phase_space)
            with torch.no_grad():
                delta_H = phase_space.kinetic_energy(v1) + latent(z1) - h0
                accepted = metropolis(delta_H, generator)
                z_new = action.normalize(select(accepted, z1, z))
                x_new, _ = self.flow(z_new)
        info = {"accepted": accepted, "delta_H": delta_H, **statistics_columns(dynamics)}
        return FlowChainState(x=action.normalize(x_new), z=z_new), info


@attrs.frozen(kw_only=True)
class FlowIMH(Sampler):
    """Independence Metropolis with proposals drawn from the flow.

    For an action with auxiliary fields each update first draws them given the current ``x``
    (:meth:`Action.refresh`), then judges the proposal with both weights under that field.
    """

    flow: Flow = injected("flow")
    lattice_shape: tuple = injected("lattice_shape")

    @torch.no_grad()
    def _log_w(self, action: Action, x: Tensor, log_q: Tensor) -> Tensor:
        return -action(x) - log_q

    @torch.no_grad()
    def init(self, x: Tensor, action: Action) -> FlowChainState:
        z, logdet_inv = self.flow.inverse(x)
        log_q = action.prior_log_prob(z) + logdet_inv
        return FlowChainState(x=x, z=z, log_w=self._log_w(action, x, log_q), log_q=log_q)

    @torch.no_grad()
    def step(self, state: FlowChainState, action: Action, generator: torch.Generator):
        x = state.x
        dynamics = action.refresh(x, generator)  # a Gibbs draw of the auxiliary fields given x (none by default)
        z1 = action.sample_prior(x.shape[0], self.lattice_shape, generator=generator, dtype=x.dtype, device=x.device)
        x1, logdet = self.flow(z1)
        log_q1 = action.prior_log_prob(z1) - logdet
        log_w1 = self._log_w(dynamics, x1, log_q1)
        # Both weights under the same auxiliary field: the cached one holds only without auxiliary fields.
        log_w0 = state.log_w if dynamics is action else self._log_w(dynamics, x, state.log_q)
        delta_H = log_w0 - log_w1
        accepted = metropolis(delta_H, generator)
        new = FlowChainState(
            x=action.normalize(select(accepted, x1, x)),
            z=select(accepted, z1, state.z),
            log_w=torch.where(accepted, log_w1, log_w0),
            log_q=torch.where(accepted, log_q1, state.log_q),
        )
        return new, {"accepted": accepted, "delta_H": delta_H, **statistics_columns(dynamics)}

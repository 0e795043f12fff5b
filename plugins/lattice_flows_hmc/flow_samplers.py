"""Samplers that use a trained flow: field-transformation HMC and flow independence Metropolis.

- ``fthmc`` (Foreman et al. 2112.01586; Lüscher's trivializing maps): HMC in the flow's latent
  variable ``z`` with ``H(z, v) = v^2/2 + S(f(z)) - log|det J_f(z)|``, force by autograd through the
  flow; measurements on ``x = f(z)``. Exact for any invertible flow: a poor flow lowers the
  acceptance, never the correctness. The inverse is used only to start from given fields.
- ``flow_imh`` (Kanwar et al. 2003.06413): propose ``x' = f(z')``, ``z' ~ r``, accept with
  ``min(1, w(x') / w(x))``, ``w = exp(-S) / q``. Its ``delta_H`` is ``log w(x) - log w(x')``, so
  ``<exp(-delta_H)> = 1`` holds for it as for HMC.
"""

from __future__ import annotations

import contextlib

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, ChainState, Flow, Integrator, Sampler, SplitForce
from lattice_flows.base import autograd_force
from lattice_flows.params import choice, component, injected

from .hmc import StepSizeTuning, kinetic_energy, metropolis, select, target_acceptance, trajectory_length

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
    through the flow and the action's own force is not used.
    """

    def __init__(self, action: Action, flow: Flow):
        self.action = action
        self.flow = flow

    def __call__(self, z: Tensor) -> Tensor:
        x, logdet = self.flow(z)
        return self.action(x) - logdet

    def force(self, z: Tensor) -> Tensor:
        return autograd_force(self, z)

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
    #: ``log w = -S(x) - log q(x)`` of the current ``x`` (flow independence Metropolis only).
    log_w: Tensor | None = None


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
        latent = LatentAction(action, self.flow)
        with _frozen_weights(self.flow):
            v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            h0 = kinetic_energy(v) + latent(z)
            z1, v1 = self.integrator.integrate(z, v, latent.split_force(self.fast_force))
            with torch.no_grad():
                delta_H = kinetic_energy(v1) + latent(z1) - h0
                accepted = metropolis(delta_H, generator)
                z_new = action.normalize(select(accepted, z1, z))
                x_new, _ = self.flow(z_new)
        return FlowChainState(x=action.normalize(x_new), z=z_new), {"accepted": accepted, "delta_H": delta_H}


@attrs.frozen(kw_only=True)
class FlowIMH(Sampler):
    """Independence Metropolis with proposals drawn from the flow."""

    flow: Flow = injected("flow")
    lattice_shape: tuple = injected("lattice_shape")

    @torch.no_grad()
    def _log_w(self, action: Action, x: Tensor, log_q: Tensor) -> Tensor:
        return -action(x) - log_q

    @torch.no_grad()
    def init(self, x: Tensor, action: Action) -> FlowChainState:
        z, logdet_inv = self.flow.inverse(x)
        log_q = action.prior_log_prob(z) + logdet_inv
        return FlowChainState(x=x, z=z, log_w=self._log_w(action, x, log_q))

    @torch.no_grad()
    def step(self, state: FlowChainState, action: Action, generator: torch.Generator):
        x = state.x
        z1 = action.sample_prior(x.shape[0], self.lattice_shape, generator=generator, dtype=x.dtype, device=x.device)
        x1, logdet = self.flow(z1)
        log_w1 = self._log_w(action, x1, action.prior_log_prob(z1) - logdet)
        delta_H = state.log_w - log_w1
        accepted = metropolis(delta_H, generator)
        new = FlowChainState(
            x=action.normalize(select(accepted, x1, x)),
            z=select(accepted, z1, state.z),
            log_w=torch.where(accepted, log_w1, state.log_w),
        )
        return new, {"accepted": accepted, "delta_H": delta_H}

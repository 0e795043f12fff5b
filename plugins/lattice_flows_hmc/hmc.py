"""Hybrid (Hamiltonian) Monte Carlo: Duane, Kennedy, Pendleton, Roweth, Phys. Lett. B 195 (1987) 216."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, ChainState, Integrator, Sampler, distributed
from lattice_flows.params import component, real

__all__ = ["HMC", "kinetic_energy", "metropolis", "select", "tune_step_size", "target_acceptance"]


def target_acceptance():
    """The spec parameter of samplers whose step size is tuned during thermalization."""
    return real(
        help="tune the step size during thermalization toward this mean acceptance probability; 0 turns tuning off",
        default=0.0,
        ge=0.0,
        lt=1.0,
    )


def tune_step_size(sampler, info: dict[str, Tensor], iteration: int):
    """``sampler`` with its integrator's step size moved toward ``sampler.target_acceptance``.

    Robbins-Monro on ``log step_size`` with gain ``1/sqrt(iteration + 1)``, driven by the mean
    Metropolis probability ``min(1, exp(-delta_H))`` over the chains (less noisy than the accept flags),
    over all ranks' chains when several processes run (so that every rank tunes to the same step size).
    """
    if not sampler.target_acceptance:
        return sampler
    p = torch.exp(-info["delta_H"]).clamp(max=1.0).nan_to_num(0.0)
    total, count = distributed.mean_over_ranks(torch.stack([p.sum(), torch.tensor(float(p.numel()), dtype=p.dtype, device=p.device)]))
    probability = (total / count).item()
    factor = math.exp((probability - sampler.target_acceptance) / math.sqrt(iteration + 1))
    integrator = attrs.evolve(sampler.integrator, step_size=sampler.integrator.step_size * factor)
    return attrs.evolve(sampler, integrator=integrator)


def kinetic_energy(v: Tensor) -> Tensor:
    """``sum v^2 / 2`` per configuration: ``(B, ...)`` -> ``(B,)``. The only kinetic energy used anywhere."""
    return 0.5 * v.square().flatten(1).sum(dim=1)


def metropolis(delta_H: Tensor, generator: torch.Generator) -> Tensor:
    """Accept with probability ``min(1, exp(-delta_H))``: bool ``(B,)``. A NaN ``delta_H`` is rejected."""
    u = torch.rand(delta_H.shape, generator=generator, dtype=delta_H.dtype, device=delta_H.device)
    return u < torch.exp(-delta_H)


def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``mask`` (``(B,)`` bool) is true, else ``old``, for tensors ``(B, ...)``."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


@attrs.frozen(kw_only=True)
class HMC(Sampler):
    """HMC with momenta ``v ~ N(0, 1)``, ``H = v^2/2 + S(x)``, any registered integrator.

    One step is one trajectory of ``integrator.n_steps`` steps for every chain at once, followed
    by a Metropolis test per chain.
    """

    example_params = {"integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}}

    integrator: Integrator = component("integrators", help="molecular-dynamics integrator (a name or a table)")
    target_acceptance: float = target_acceptance()

    def adapt(self, info, iteration):
        return tune_step_size(self, info, iteration)

    def trajectory(self, x: Tensor, v: Tensor, action: Action) -> tuple[Tensor, Tensor, Tensor]:
        """Integrate from ``(x, v)``; returns ``(x', v', delta_H)`` without accepting anything."""
        h0 = kinetic_energy(v) + action(x)
        x1, v1 = self.integrator.integrate(x, v, action.force)
        return x1, v1, kinetic_energy(v1) + action(x1) - h0

    def step(self, state: ChainState, action: Action, generator: torch.Generator):
        x = state.x
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x1, _, delta_H = self.trajectory(x, v, action)
        accepted = metropolis(delta_H, generator)
        return ChainState(x=action.normalize(select(accepted, x1, x))), {"accepted": accepted, "delta_H": delta_H}

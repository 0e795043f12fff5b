"""Hybrid (Hamiltonian) Monte Carlo: Duane, Kennedy, Pendleton, Roweth, Phys. Lett. B 195 (1987) 216."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, ChainState, Integrator, Sampler, distributed
from lattice_flows.errors import ParameterError
from lattice_flows.params import component, real
from lattice_flows.phase_space import FLAT, PhaseSpace

__all__ = [
    "HMC", "StepSizeTuning", "hamiltonian_trajectory", "kinetic_energy", "metropolis", "select", "statistics_columns", "tune_step_size", "tuning_report",
    "target_acceptance", "trajectory_length",
]


def target_acceptance():
    """The spec parameter of samplers whose step size is tuned during thermalization."""
    return real(
        help=(
            "tune the step size during thermalization toward this mean acceptance probability, keeping the "
            "trajectory length (n_steps follows the step); 0 turns tuning off"
        ),
        default=0.0,
        ge=0.0,
        lt=1.0,
    )


#: Above this many times the spec's integration steps per trajectory, tuning warns (see :func:`tuning_report`).
COSTLY_TUNING = 4.0


def trajectory_length():
    """The spec parameter that fixes the molecular-dynamics time of a trajectory while the step is tuned."""
    return real(
        help=(
            "molecular-dynamics time of a trajectory, kept while target_acceptance tunes the step size: "
            "n_steps = max(1, round(trajectory_length / step_size)); 0: the integrator's step_size * n_steps "
            "(filled in by the tuning)"
        ),
        default=0.0,
        ge=0.0,
        lt=1e6,
    )


def check_tuning(sampler) -> None:
    """Spec check of a tuned sampler: ``trajectory_length`` is only used by tuning."""
    if sampler.trajectory_length and not sampler.target_acceptance:
        raise ParameterError(
            "trajectory_length",
            f"expected 0 unless target_acceptance > 0 tunes the step size (it is used only then); got "
            f"{sampler.trajectory_length!r} with target_acceptance 0: set target_acceptance, or drop "
            "trajectory_length and give the trajectory as the integrator's step_size and n_steps",
        )


def tune_step_size(sampler, info: dict[str, Tensor], iteration: int):
    """``sampler`` with its integrator's step size moved toward ``sampler.target_acceptance``.

    Robbins-Monro on ``log step_size`` with gain ``1/sqrt(iteration + 1)``, driven by the mean
    Metropolis probability ``min(1, exp(-delta_H))`` over the chains (less noisy than the accept flags),
    over all ranks' chains when several processes run (so that every rank tunes to the same step size).

    The trajectory length ``T`` (molecular-dynamics time) is kept: ``T = sampler.trajectory_length``,
    or, when that is 0, the integrator's ``step_size * n_steps`` as the spec gives it (it is then
    written into the returned sampler, so that later calls and a resumed run keep the same ``T``).
    The step is capped at ``T`` and ``n_steps = max(1, round(T / step_size))``, so that
    ``step_size * n_steps`` is within half a step of ``T``. Shrinking the step alone, at fixed
    ``n_steps``, would shorten the trajectory until the chains random-walk (a poor flow tuned FTHMC
    to trajectories of length 0.1 that had not thermalized after 200 updates).
    """
    if not sampler.target_acceptance:
        return sampler
    integrator = sampler.integrator
    length = sampler.trajectory_length or integrator.step_size * integrator.n_steps
    p = torch.exp(-info["delta_H"]).clamp(max=1.0).nan_to_num(0.0)
    total, count = distributed.mean_over_ranks(torch.stack([p.sum(), torch.tensor(float(p.numel()), dtype=p.dtype, device=p.device)]))
    probability = (total / count).item()
    factor = math.exp((probability - sampler.target_acceptance) / math.sqrt(iteration + 1))
    step_size = min(integrator.step_size * factor, length)
    n_steps = max(1, round(length / step_size))
    integrator = attrs.evolve(integrator, step_size=step_size, n_steps=n_steps)
    return attrs.evolve(sampler, integrator=integrator, trajectory_length=length)


def tuning_report(original, tuned) -> str | None:
    """A warning when tuning made a trajectory cost far more integration steps than ``original``'s, else None.

    ``original`` is the sampler as the spec gives it, ``tuned`` the one after thermalization. Many more
    steps at the same trajectory length mean the target acceptance needs a much smaller step than the
    spec's: for FTHMC a poorly trained flow (whose latent force is stiff), for HMC a step that was far
    too large to start with or a target acceptance close to 1.
    """
    if not original.target_acceptance:
        return None
    before, after = original.integrator, tuned.integrator
    if after.n_steps <= COSTLY_TUNING * before.n_steps:
        return None
    return (
        f"the step size tuned to target_acceptance {tuned.target_acceptance:g} is {after.step_size:.3g} "
        f"(spec {before.step_size:.3g}), so a trajectory of length {tuned.trajectory_length:.3g} takes "
        f"{after.n_steps} steps, {after.n_steps / before.n_steps:.1f} times the spec's {before.n_steps}: every update "
        "costs that much more; "
        + (
            "a flow that needs so small a step is poor: train it longer (docs/flows.md)"
            if hasattr(tuned, "flow")
            else "lower target_acceptance or trajectory_length if that is too slow"
        )
    )


def kinetic_energy(v: Tensor) -> Tensor:
    """The flat kinetic energy ``sum v^2 / 2`` per configuration: ``(B, ...)`` -> ``(B,)`` (:data:`FLAT`'s).

    The samplers use the action's phase space instead (``action.phase_space.kinetic_energy``), which is this
    one unless the theory says otherwise.
    """
    return FLAT.kinetic_energy(v)


def statistics_columns(dynamics) -> dict[str, Tensor]:
    """The per-trajectory statistics of the action an update used (what ``Action.refresh`` returned), as table
    columns: ``{"action.<name>": (B,) tensor}``; empty for an action without any (the default)."""
    return {f"action.{name}": value for name, value in dynamics.statistics().items()}


def hamiltonian_trajectory(
    integrator: Integrator, x: Tensor, v: Tensor, action: Action, phase_space: PhaseSpace
) -> tuple[Tensor, Tensor, Tensor]:
    """One trajectory of ``integrator`` from ``(x, v)`` with ``H = K(v) + S(x)`` (``K`` of ``phase_space``, ``S``
    ``action``: anything with ``__call__`` ``(B,)`` and ``force``): ``(x', v', delta_H (B,))``, nothing accepted."""
    h0 = phase_space.kinetic_energy(v) + action(x)
    x1, v1 = integrator.integrate_on(x, v, action.force, phase_space)
    return x1, v1, phase_space.kinetic_energy(v1) + action(x1) - h0


def metropolis(delta_H: Tensor, generator: torch.Generator) -> Tensor:
    """Accept with probability ``min(1, exp(-delta_H))``: bool ``(B,)``. A NaN ``delta_H`` is rejected."""
    u = torch.rand(delta_H.shape, generator=generator, dtype=delta_H.dtype, device=delta_H.device)
    return u < torch.exp(-delta_H)


def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``mask`` (``(B,)`` bool) is true, else ``old``, for tensors ``(B, ...)``."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


class StepSizeTuning:
    """The ``target_acceptance`` tuning that HMC and FTHMC share, for an attrs sampler with the fields
    ``integrator``, ``target_acceptance`` and ``trajectory_length``: checked when built, applied while
    thermalizing (:func:`tune_step_size`), reported after it (:func:`tuning_report`)."""

    def __attrs_post_init__(self):
        check_tuning(self)

    def adapt(self, info, iteration):
        return tune_step_size(self, info, iteration)

    def tuning_report(self, original):
        return tuning_report(original, self)


@attrs.frozen(kw_only=True)
class HMC(StepSizeTuning, Sampler):
    """HMC with ``H = K(v) + S(x)`` on the action's phase space, any registered integrator.

    One step is one trajectory of ``integrator.n_steps`` steps for every chain at once, followed
    by a Metropolis test per chain: the action's auxiliary fields drawn (:meth:`Action.refresh`; none by
    default), momenta from ``action.phase_space.sample_momenta`` (``v ~ N(0, 1)`` on a flat space, where
    ``K = v^2/2``), the trajectory with the refreshed action's force, the test with its ``H``. The
    refreshed action's :meth:`Action.statistics` become the columns ``action.<name>``.
    """

    example_params = {"integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 10}}

    integrator: Integrator = component("integrators", help="molecular-dynamics integrator (a name or a table)")
    target_acceptance: float = target_acceptance()
    trajectory_length: float = trajectory_length()

    def trajectory(
        self, x: Tensor, v: Tensor, action: Action, phase_space: PhaseSpace | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Integrate from ``(x, v)``; returns ``(x', v', delta_H)`` without accepting anything.

        ``H = K(v) + S(x)`` with ``K`` of ``phase_space`` (default: ``action.phase_space``); ``action`` is the
        one the trajectory runs with (what :meth:`Action.refresh` returned, for an action with auxiliary fields).
        """
        return hamiltonian_trajectory(self.integrator, x, v, action, action.phase_space if phase_space is None else phase_space)

    def step(self, state: ChainState, action: Action, generator: torch.Generator):
        x = state.x
        dynamics = action.refresh(x, generator)  # auxiliary fields for this trajectory (none by default)
        phase_space = action.phase_space
        v = phase_space.sample_momenta(x, generator)
        x1, _, delta_H = self.trajectory(x, v, dynamics, phase_space)
        accepted = metropolis(delta_H, generator)
        info = {"accepted": accepted, "delta_H": delta_H, **statistics_columns(dynamics)}
        return ChainState(x=action.normalize(select(accepted, x1, x))), info

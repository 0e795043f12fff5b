"""The exact direct sampler of 2D U(1) Wilson gauge theory, as a :class:`~lattice_flows.Sampler`."""

from __future__ import annotations

import attrs
import torch

from lattice_flows import Action, ChainState, Sampler

from .action import U1Wilson
from .exact_sampling import sample_exact

__all__ = ["U1Exact"]


@attrs.frozen(kw_only=True)
class U1Exact(Sampler):
    """Independent exact configurations every step (no Markov chain: ``tau_int = 1/2``).

    The ideal sampler to compare others against; ``accepted`` is always true and ``delta_H`` zero.
    """

    theories = ("u1",)  # and of those only u1_wilson (applies_to)
    exact_independent = True  # lattice-flows compare starts every sampler from its draws

    @classmethod
    def applies_to(cls, action) -> bool:
        """Only the pure-gauge Wilson action (``u1_wilson``): other ``u1`` actions have no exact sampler here."""
        kind = action if isinstance(action, type) else type(action)
        return issubclass(kind, U1Wilson)

    def check_action(self, action: Action) -> None:
        if not self.applies_to(action):
            raise ValueError(f"u1_exact samples only the u1_wilson action, got {type(action).__name__}")

    def step(self, state: ChainState, action: Action, generator: torch.Generator):
        x = state.x
        lattice_shape = tuple(x.shape[2:])
        new = sample_exact(action.beta, x.shape[0], lattice_shape, generator=generator, dtype=x.dtype, device=x.device)
        info = {
            "accepted": torch.ones(x.shape[0], dtype=torch.bool, device=x.device),
            "delta_H": x.new_zeros(x.shape[0]),
        }
        return ChainState(x=new), info

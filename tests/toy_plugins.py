"""A third party's plugins, defined outside the built-in packages, for tests that need a simple theory.

``GaussianAction``: ``S = sum x^2 / (2 sigma^2)`` for a real field of any shape, with a standard
normal prior. ``AffineFlow``: ``x = e^a z + b`` with two scalar parameters, so training it on the
Gaussian has a known answer (``a = log sigma``, ``b = 0``, ``ESS = 1``). The tests register them
through faked entry points (see the ``toy_plugins`` fixture in conftest.py).
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import entrypoints
import torch

from lattice_flows import Action, Flow
from lattice_flows.params import real


@attrs.frozen(kw_only=True)
class GaussianAction(Action):
    theory: ClassVar[str] = "gaussian"
    example_params: ClassVar[dict] = {"sigma": 1.5}
    sigma: float = real(help="width of the Gaussian", gt=0.0)

    def field_shape(self, lattice_shape):
        return tuple(lattice_shape)

    def __call__(self, x):
        return (x**2).flatten(1).sum(1) / (2 * self.sigma**2)

    def force(self, x):
        return x / self.sigma**2

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device):
        return torch.randn((n, *lattice_shape), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x):
        return -0.5 * (x**2).flatten(1).sum(1) - 0.5 * x[0].numel() * math.log(2 * math.pi)

    def random_symmetry(self, x, generator):
        return -x


class AffineFlow(Flow):
    theory: ClassVar[str] = "gaussian"
    equivariant: ClassVar[bool] = False  # the shift b breaks the symmetry x -> -x of the Gaussian

    @attrs.frozen(kw_only=True)
    class Config:
        init_log_scale: float = real(help="initial log of the scale", default=0.0)

    def __init__(self, config, lattice_shape):
        super().__init__(config, lattice_shape)
        self.log_scale = torch.nn.Parameter(torch.tensor(config.init_log_scale))
        self.shift = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, z):
        n = z[0].numel()
        return torch.exp(self.log_scale) * z + self.shift, (n * self.log_scale).expand(z.shape[0])

    def inverse(self, x):
        n = x[0].numel()
        return (x - self.shift) * torch.exp(-self.log_scale), (-n * self.log_scale).expand(x.shape[0])


class IdentityFlow(Flow):
    """``f(z) = z`` for U(1) links: FTHMC through it must be plain HMC, trajectory for trajectory."""

    theory: ClassVar[str] = "u1"

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def __init__(self, config, lattice_shape):
        super().__init__(config, lattice_shape)
        self.unused = torch.nn.Parameter(torch.zeros(()))  # a Module with no parameters would not train

    def forward(self, z):
        return z, z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x, x.new_zeros(x.shape[0])


def entry_points() -> dict[str, list[entrypoints.EntryPoint]]:
    """Entry points, by group, as a distribution ``toy-plugins`` would declare them."""
    dist = entrypoints.Distribution("toy-plugins", "1.0")
    return {
        "lattice_flows.actions": [entrypoints.EntryPoint("gaussian", __name__, "GaussianAction", distro=dist)],
        "lattice_flows.flows": [
            entrypoints.EntryPoint("affine", __name__, "AffineFlow", distro=dist),
            entrypoints.EntryPoint("identity_u1", __name__, "IdentityFlow", distro=dist),
        ],
    }

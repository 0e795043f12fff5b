"""Context-free plaquette coupling layers: every active plaquette through one spline, the von Mises map.

The layers of :mod:`.coupling` with the conditioner left out: layer ``(mu, offset)`` (:mod:`.masks`) moves its
active plaquettes ``x_P -> h(x_P)`` through one :class:`.circle_maps.CircularSpline` shared by all sites, by
shifting the active link by ``sign * (h(x_P) - x_P)`` (so the passive plaquette holding that link moves by
``-(h(x_P) - x_P)``), and ``log|det|`` gains ``sum log h'(x_P)`` over the active plaquettes (the Jacobian is
triangular, as in :mod:`.coupling`). Plaquettes are gauge invariant, so the map is gauge equivariant.

:class:`VonMisesTransport` sets the splines to the single-plaquette map from von Mises(``beta_from``) to
von Mises(``beta_to``) (:func:`.coupling.von_mises_start_halves`), which is what a ``u1_plaquette_coupling`` flow
with ``latent_beta = beta_from``, ``von_mises_beta = beta_to`` and ``hidden = []`` does before training (its
nets' weights start at zero, so only their last bias acts); ``tests/test_u1_transport.py`` checks that the
two agree to rounding. Without a net a layer costs a few evaluations of the Wilson action (the conditioner
of ``u1_plaquette_coupling`` costs about 3 times more; the spline's bin tables are built once per layer,
:meth:`.circle_maps.CircularSpline.displacement_shared`), which is what makes it worth putting between the
steps of a non-equilibrium protocol (:class:`lattice_flows_u1.nonequilibrium.U1NonEquilibriumTransport`).

Shapes: links ``(B, 2, L_0, L_1)`` with ``L_0, L_1`` multiples of 4; ``log|det dx'/dx|`` ``(B,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lattice_flows.angles import wrap

from ..geometry import plaquette_angles
from . import coupling_plain as plain
from . import masks
from .circle_maps import CircularSpline
from .coupling import von_mises_start_halves

__all__ = ["VonMisesTransport"]


class VonMisesTransport:
    """``n_layers`` context-free coupling layers (in :data:`.masks.ORDER`) that carry plaquettes from
    von Mises(``beta_from``) toward von Mises(``beta_to``): the ``mu = 0`` layers (the first 4) apply the map to
    the mean of the two betas, the ``mu = 1`` layers the map from there to ``beta_to``, as in the von Mises start
    of ``u1_plaquette_coupling``. With 4 layers every plaquette is active once and moves half way.

    ``__call__(x)``: links ``(B, 2, L_0, L_1)`` -> ``(links, log|det| (B,))``, in the dtype and on the
    device of ``x`` (the spline parameters follow it)."""

    def __init__(self, beta_from: float, beta_to: float, *, n_layers: int = 4, n_bins: int = 16):
        if n_layers < 1:
            raise ValueError(f"VonMisesTransport: n_layers must be at least 1, got {n_layers}")
        self.beta_from, self.beta_to, self.n_bins = float(beta_from), float(beta_to), int(n_bins)
        self.labels = [masks.layer_labels(i) for i in range(n_layers)]
        try:
            starts = [torch.from_numpy(start) for start in von_mises_start_halves(self.beta_from, self.beta_to, self.n_bins)]
        except ValueError as exc:
            raise ValueError(f"VonMisesTransport: {exc}; use fewer bins or a smaller step") from None
        # layers past the first period are the identity, as in u1_plaquette_coupling's start
        self._params = [starts[mu] if i < masks.PERIOD else None for i, (mu, _) in enumerate(self.labels)]
        self.circle_map = CircularSpline(n_bins=self.n_bins)
        self._cache: dict = {}

    def _params_on(self, like: Tensor) -> list:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = [None if p is None else p.to(dtype=like.dtype, device=like.device) for p in self._params]
        return self._cache[key]

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != 2 or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(
                f"VonMisesTransport expects link angles (B, 2, L_0, L_1) with L_0, L_1 multiples of 4, got {tuple(x.shape)}"
            )
        plaq = plaquette_angles(x).permute(1, 2, 0).contiguous()  # (L_0, L_1, B)
        logdet = x.new_zeros(x.shape[0])
        shifts = (torch.zeros_like(plaq), torch.zeros_like(plaq))  # per direction, on the (L_0, L_1, B) sites
        for (mu, offset), params in zip(self.labels, self._params_on(x)):
            if params is None:
                continue
            active = plain.stripe(plaq, mu, offset)
            delta, log_slope = self.circle_map.displacement_shared(active, params)
            plaq = plain.moved(plaq, delta, mu, offset)
            plain.stripe(shifts[mu], mu, offset).add_(delta if masks.ACTIVE_SIGN[mu] > 0 else -delta)
            logdet = logdet + log_slope.sum(dim=(0, 1))
        return wrap(x + torch.stack(shifts).permute(3, 0, 1, 2)), logdet

"""Observables of the XY model, each with its exact expectation where one is known.

Every observable maps site angles ``(B, L_0, ..., L_{D-1})`` to one value per configuration, ``(B,)``.
Exact values (:meth:`~lattice_flows.Observable.exact`) are given for the ``xy`` action on 2D lattices
small enough for the transfer matrix of :mod:`lattice_flows_xy.exact`; its accuracy is stated there
(absolute error about ``1e-8`` or better, far below any Monte Carlo error). Elsewhere ``exact()`` is empty.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from lattice_flows import Action, Observable
from lattice_flows.params import injected

from . import exact
from .action import XY, link_differences, wrap

__all__ = ["XYEnergy", "HelicityModulus", "VortexDensity", "MagnetizationSquared", "plaquette_winding"]


class _XYObservable(Observable):
    theory: ClassVar[str] = "xy"

    def _reference(self, transpose_if_shorter: bool) -> exact.XYExact | None:
        """The exact values for this lattice, if the action is :class:`XY` on a feasible 2D lattice.

        ``transpose_if_shorter``: the observable is symmetric under exchanging the two directions, so the
        transfer matrix may run along whichever gives the shorter rows.
        """
        action, shape = self.action, tuple(self.lattice_shape)
        if not isinstance(action, XY) or len(shape) != 2:
            return None
        if transpose_if_shorter and shape[1] > shape[0]:
            shape = shape[::-1]
        return exact.reference(action.beta, shape)


@attrs.frozen(kw_only=True)
class XYEnergy(_XYObservable):
    """Link energy ``E = (1 / (D V)) sum_{n, mu} cos(theta_n - theta_{n + mu})``, the mean over all links, ``(B,)``.

    ``S = -beta D V E``. ``exact()``: ``<E> = (1 / (D V)) d ln Z / d beta`` from the transfer matrix (2D).
    At small ``beta`` it starts as ``u + 4 u^3 u' + ...`` with ``u = I_1(beta) / I_0(beta)`` on lattices of
    sizes of at least 5 (plaquette loops; see ``tests/test_xy_plugin.py``).
    """

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, theta: Tensor) -> Tensor:
        n_dims = theta.dim() - 1
        cosines = sum(torch.cos(link_differences(theta, mu)) for mu in range(n_dims))
        return cosines.flatten(1).mean(dim=1) / n_dims

    def exact(self) -> dict[int, float]:
        values = self._reference(transpose_if_shorter=True)
        return {} if values is None else {1: values.energy}


@attrs.frozen(kw_only=True)
class HelicityModulus(_XYObservable):
    """Helicity modulus (spin stiffness) along direction 0, per-configuration estimator, ``(B,)``::

        Upsilon = (1/V) [ sum_n cos(theta_n - theta_{n+0}) - beta (sum_n sin(theta_n - theta_{n+0}))^2 ]

    (Teitel and Jayaprakash, Phys. Rev. B 27 (1983) 598; Hasenbusch, J. Phys. A 38 (2005) 5869). Its mean
    is ``(1/V) d^2 F / d alpha^2`` at ``alpha = 0``, with ``F = -ln Z / beta`` and ``alpha`` a uniform twist
    of every link in direction 0 (``theta_n - theta_{n+0} -> theta_n - theta_{n+0} - alpha``): the
    free-energy cost of a twisted boundary. In 2D, ``beta <Upsilon>`` jumps from ``2 / pi`` to 0 at the BKT
    transition in the infinite volume. Needs ``beta``, so the action must be :class:`XY`.

    ``exact()``: ``<Upsilon> = L_0^2 <Q^2> / (beta V)``, ``Q`` the winding number of the currents along
    direction 0 (2D; :mod:`lattice_flows_xy.exact`).
    """

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __attrs_post_init__(self):
        if not isinstance(self.action, XY):
            raise TypeError(f"helicity_modulus needs the xy action (for its beta), got {type(self.action).__name__}")

    def __call__(self, theta: Tensor) -> Tensor:
        d = link_differences(theta, 0).flatten(1)
        volume = d.shape[1]
        return (torch.cos(d).sum(dim=1) - self.action.beta * torch.sin(d).sum(dim=1) ** 2) / volume

    def exact(self) -> dict[int, float]:
        values = self._reference(transpose_if_shorter=False)
        return {} if values is None else {1: values.helicity_modulus}


def plaquette_winding(theta: Tensor, mu: int = 0, nu: int = 1) -> Tensor:
    """Winding number of every plaquette ``(n, n + mu, n + mu + nu, n + nu)`` of the plane ``(mu, nu)``.

    The sum of the four angle differences along the plaquette's boundary, each wrapped into
    ``[-pi, pi)``, divided by ``2 pi``: an integer in ``{-1, 0, 1}`` (``-2`` needs all four differences
    exactly ``-pi``). ``theta``: ``(B, L_0, ..., L_{D-1})``; returns int64 of the same shape (the plaquette
    at its corner ``n``). On a periodic lattice the windings of a plane sum to zero.
    """
    d_mu = wrap(torch.roll(theta, -1, dims=1 + mu) - theta)  # n -> n + mu
    d_nu = wrap(torch.roll(theta, -1, dims=1 + nu) - theta)  # n -> n + nu
    circulation = d_mu + torch.roll(d_nu, -1, dims=1 + mu) - torch.roll(d_mu, -1, dims=1 + nu) - d_nu
    return torch.round(circulation / (2 * math.pi)).to(torch.int64)


@attrs.frozen(kw_only=True)
class VortexDensity(_XYObservable):
    """Fraction of plaquettes that hold a vortex or an antivortex (winding ``+-1``), ``(B,)``.

    The winding of a plaquette is :func:`plaquette_winding`; in ``D > 2`` every plane counts. There is no
    exact value here (``exact()`` is empty); at ``beta = 0`` (independent uniform angles) it is exactly
    ``1/3``, which ``tests/test_xy_plugin.py`` checks on prior samples.
    """

    def __call__(self, theta: Tensor) -> Tensor:
        n_dims = theta.dim() - 1
        planes = [(mu, nu) for mu in range(n_dims) for nu in range(mu + 1, n_dims)]
        vortices = sum((plaquette_winding(theta, mu, nu) != 0).flatten(1).sum(dim=1) for mu, nu in planes)
        return vortices.to(theta.dtype) / (len(planes) * theta[0].numel())


@attrs.frozen(kw_only=True)
class MagnetizationSquared(_XYObservable):
    """``|M|^2 = |sum_n e^{i theta_n}|^2 / V^2``, ``(B,)``; ``V <|M|^2>`` is the susceptibility of the
    finite lattice (``<M> = 0`` by the rotation symmetry).

    ``exact()``: from the transfer matrix with the insertions ``e^{+-i theta}`` (2D).
    """

    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __call__(self, theta: Tensor) -> Tensor:
        flat = theta.flatten(1)
        return (torch.cos(flat).sum(dim=1) ** 2 + torch.sin(flat).sum(dim=1) ** 2) / flat.shape[1] ** 2

    def exact(self) -> dict[int, float]:
        values = self._reference(transpose_if_shorter=True)
        return {} if values is None else {1: values.magnetization_squared}

"""Even-odd (red-black) preconditioning of the Wilson-Dirac operator, for solving ``D^dag D X = b``.

The pseudofermion action ``schwinger`` with ``even_odd = true`` puts its pseudofermions on the even sites and
inverts ``D_hat^dag D_hat`` (:class:`lattice_flows_schwinger.action.EvenOddPseudofermionDynamics`): 1.9x
cheaper HMC trajectories at beta 6 on 16x16 (``benchmarks/schwinger_even_odd_hmc.py``). As a drop-in solver
of the full ``D^dag D X = b`` (:func:`solve_normal_even_odd`, two Schur solves) it does not pay
(``benchmarks/schwinger_throughput.py``).

A site is even when ``n_0 + n_1`` is even. The hopping term of ``D`` (same conventions as :mod:`.dirac`) only
connects even and odd sites, and the diagonal is ``M = m + 2`` on both, so in the even/odd blocks

    D = [[M, D_eo], [D_oe, M]],   D_hat = M - D_eo D_oe / M   (on even sites; the Schur complement).

``D psi = eta`` is solved as ``D_hat psi_e = eta_e - D_eo eta_o / M`` (CG on ``D_hat^dag D_hat``, the normal
equations, on half the sites), then ``psi_o = (eta_o - D_oe psi_e) / M``. ``D^dag = gamma_5 D gamma_5`` and
``gamma_5`` does not mix parities, so ``(D^dag D)^{-1} b = D^{-1} gamma_5 D^{-1} gamma_5 b``: two such solves.

Fields on one parity are packed, ``(B, 2, V/2)`` (spin second), sites in the order of the flattened lattice;
the neighbours are gathered with index tables. Needs even ``L_0`` and ``L_1`` (a periodic lattice of odd
size is not bipartite).
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch
from torch import Tensor

from .cg import conjugate_gradient
from .dirac import apply_normal, fermion_links

__all__ = ["EvenOddGeometry", "EvenOddOperator", "EvenOddResult", "solve_normal_even_odd"]


def _gamma5(psi: Tensor) -> Tensor:
    out = psi.clone()
    out[:, 1] = -out[:, 1]
    return out


class EvenOddGeometry:
    """Index tables of an ``L_0 x L_1`` lattice: the even and odd sites (flat indices ``n_0 L_1 + n_1``), and for
    each parity ``p`` and direction ``mu`` the packed positions, in the other parity, of ``n + e_mu`` and ``n - e_mu``."""

    def __init__(self, shape: Sequence[int], device: torch.device | str = "cpu"):
        l0, l1 = (int(s) for s in shape)
        if l0 % 2 or l1 % 2:
            raise ValueError(f"even-odd preconditioning needs even lattice sizes, got {[l0, l1]}")
        self.shape = (l0, l1)
        n0, n1 = torch.meshgrid(torch.arange(l0), torch.arange(l1), indexing="ij")
        parity = ((n0 + n1) % 2).flatten()
        self.sites = [torch.nonzero(parity == p).flatten().to(device) for p in (0, 1)]
        position = torch.empty(l0 * l1, dtype=torch.int64)
        for p in (0, 1):
            position[self.sites[p].cpu()] = torch.arange(self.sites[p].numel())
        flat = lambda a, b: ((a % l0) * l1 + (b % l1)).flatten()  # noqa: E731
        up = [flat(n0 + 1, n1), flat(n0, n1 + 1)]
        down = [flat(n0 - 1, n1), flat(n0, n1 - 1)]
        # for parity p: forward[p][mu] = position (in parity 1-p) of n + e_mu, n the sites of p; the flat site of n - e_mu
        self.forward = [[position[up[mu][self.sites[p].cpu()]].to(device) for mu in (0, 1)] for p in (0, 1)]
        self.backward = [[position[down[mu][self.sites[p].cpu()]].to(device) for mu in (0, 1)] for p in (0, 1)]
        self.backward_site = [[down[mu][self.sites[p].cpu()].to(device) for mu in (0, 1)] for p in (0, 1)]

    def pack(self, psi: Tensor, parity: int) -> Tensor:
        """``(B, 2, L_0, L_1)`` -> its sites of ``parity``, ``(B, 2, V/2)``."""
        return psi.flatten(2)[..., self.sites[parity]]

    def unpack(self, even: Tensor, odd: Tensor) -> Tensor:
        """Even and odd parts ``(B, 2, V/2)`` -> the full field ``(B, 2, L_0, L_1)``."""
        out = even.new_zeros(*even.shape[:2], self.shape[0] * self.shape[1])
        out[..., self.sites[0]] = even
        out[..., self.sites[1]] = odd
        return out.view(*even.shape[:2], *self.shape)


class EvenOddOperator:
    """The Wilson-Dirac operator of the links ``x`` ``(B, 2, L_0, L_1)`` split by parity (see the module text)."""

    def __init__(self, x: Tensor, mass: float, geometry: EvenOddGeometry | None = None, links: Tensor | None = None):
        self.geometry = geometry if geometry is not None else EvenOddGeometry(x.shape[2:], x.device)
        g = self.geometry
        u = (fermion_links(x) if links is None else links).flatten(2)  # (B, 2, V), antiperiodic sign folded in
        self.diagonal = mass + 2.0
        # links of the hops out of the sites of parity p: U_mu(n) forward, conj(U_mu(n - e_mu)) backward, (B, V/2)
        self.u_forward = [[u[:, mu, g.sites[p]] for mu in (0, 1)] for p in (0, 1)]
        self.u_backward = [[u[:, mu, g.backward_site[p][mu]].conj() for mu in (0, 1)] for p in (0, 1)]
        # the four neighbours of each site in one gather: n + e_0, n + e_1, n - e_0, n - e_1, (4 V/2,) and (B, 1, 4, V/2)
        self._neighbours = [torch.cat([*g.forward[p], *g.backward[p]]) for p in (0, 1)]
        self._links = [torch.stack([*self.u_forward[p], *self.u_backward[p]], dim=1).unsqueeze(1) for p in (0, 1)]

    def hop(self, parity: int, psi: Tensor) -> Tensor:
        """``sum_mu [(1 - g_mu) U_mu(n) psi(n + e_mu) + (1 + g_mu) conj(U_mu(n - e_mu)) psi(n - e_mu)]`` on the sites
        ``n`` of ``parity``; ``psi`` ``(B, 2, V/2)`` lives on the other parity."""
        half = psi.shape[-1]
        nb = psi[..., self._neighbours[parity]].view(psi.shape[0], 2, 4, half) * self._links[parity]
        a, b = nb[:, 0], nb[:, 1]  # upper and lower spin components of the four hops, (B, 4, V/2)
        # (1 - g_0), (1 - g_1) forward; (1 + g_0), (1 + g_1) backward: upper components h, lower ones -h, -i h, h, i h
        h0, h1, h2, h3 = a[:, 0] - b[:, 0], a[:, 1] + 1j * b[:, 1], a[:, 2] + b[:, 2], a[:, 3] - 1j * b[:, 3]
        return torch.stack([h0 + h1 + h2 + h3, h2 - h0 + 1j * (h3 - h1)], dim=1)

    def off_diagonal(self, parity: int, psi: Tensor) -> Tensor:
        """``D_eo psi`` (``parity = 0``) or ``D_oe psi`` (``parity = 1``): ``-1/2`` the hop onto ``parity``."""
        return -0.5 * self.hop(parity, psi)

    def schur(self, psi_e: Tensor) -> Tensor:
        """``D_hat psi_e = M psi_e - D_eo D_oe psi_e / M`` on even sites, ``(B, 2, V/2)``."""
        return self.diagonal * psi_e - self.hop(0, self.hop(1, psi_e)) / (4.0 * self.diagonal)

    def schur_dagger(self, psi_e: Tensor) -> Tensor:
        """``D_hat^dag = gamma_5 D_hat gamma_5``."""
        return _gamma5(self.schur(_gamma5(psi_e)))

    def schur_normal(self, psi_e: Tensor) -> Tensor:
        """``D_hat^dag D_hat psi_e``, hermitian positive: what CG inverts."""
        return self.schur_dagger(self.schur(psi_e))

    def solve_dirac(self, eta: Tensor, *, tol: float, max_iter: int) -> tuple[Tensor, Tensor]:
        """``psi = D^{-1} eta`` for a full field ``eta`` ``(B, 2, L_0, L_1)``; returns ``psi`` and the CG iterations per chain."""
        g, m = self.geometry, self.diagonal
        eta_e, eta_o = g.pack(eta, 0), g.pack(eta, 1)
        rhs = eta_e - self.off_diagonal(0, eta_o) / m
        result = conjugate_gradient(self.schur_normal, self.schur_dagger(rhs), tol=tol, max_iter=max_iter,
                                    what="the even-odd Schur complement")
        psi_e = result.x
        psi_o = (eta_o - self.off_diagonal(1, psi_e)) / m
        return g.unpack(psi_e, psi_o), result.iterations


@attrs.frozen
class EvenOddResult:
    """``x`` solves ``D^dag D x = b``; ``iterations``: CG iterations per chain of both half-lattice solves together,
    ``residual``: the relative residual ``|b - D^dag D x| / |b|`` of the full system, recomputed, ``(B,)``."""

    x: Tensor
    iterations: Tensor
    residual: Tensor


def solve_normal_even_odd(
    x: Tensor, b: Tensor, mass: float, *, tol: float, max_iter: int = 5000, inner_tol: float | None = None,
    operator: EvenOddOperator | None = None,
) -> EvenOddResult:
    """``(D^dag D)^{-1} b`` through two even-odd solves, ``D^{-1} gamma_5 D^{-1} gamma_5 b``.

    ``inner_tol``: the relative residual of each CG on ``D_hat^dag D_hat`` (default ``tol / 4``, which the tests
    and the benchmark check is enough for the full system to reach ``tol``: the returned ``residual`` says).
    """
    op = operator if operator is not None else EvenOddOperator(x, mass)
    inner = tol / 4 if inner_tol is None else inner_tol
    y, it1 = op.solve_dirac(_gamma5(b), tol=inner, max_iter=max_iter)
    sol, it2 = op.solve_dirac(_gamma5(y), tol=inner, max_iter=max_iter)
    r = b - apply_normal(x, sol, mass)
    norm = lambda v: (v.conj() * v).real.flatten(1).sum(1).sqrt()  # noqa: E731
    return EvenOddResult(x=sol, iterations=it1 + it2, residual=norm(r) / norm(b))

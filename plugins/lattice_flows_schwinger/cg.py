"""A batched conjugate-gradient solver for hermitian positive operators (``D^dag D``), one tolerance per chain.

Every chain (the first axis) iterates until its own relative residual ``|b - A x| / |b|`` is below ``tol``;
a chain that has converged stops moving while the others go on. A chain still above ``tol`` after
``max_iter`` iterations raises :class:`CGNotConverged`, naming it: the solver never returns an unconverged
solution, so a force built on it is never silently wrong.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import Tensor

from lattice_flows.errors import LatticeFlowsError

__all__ = ["CGNotConverged", "CGResult", "conjugate_gradient"]


class CGNotConverged(LatticeFlowsError, RuntimeError):
    """Some chains' conjugate-gradient solves did not reach the tolerance within the iteration cap."""

    def __init__(self, chains: list[int], residuals: list[float], tol: float, max_iter: int, what: str = ""):
        shown = ", ".join(f"chain {c}: {r:.3g}" for c, r in list(zip(chains, residuals))[:8])
        more = f" and {len(chains) - 8} more" if len(chains) > 8 else ""
        super().__init__(
            f"conjugate gradient{' for ' + what if what else ''} did not converge in {max_iter} iterations for "
            f"{len(chains)} chain(s) (relative residual {shown}{more}; expected below tol = {tol:g}); raise "
            "the action's cg_max_iter, loosen cg_tol, or use a larger mass (small masses and rough fields have "
            "near-zero modes that slow the solver)"
        )
        self.chains, self.residuals, self.tol, self.max_iter = chains, residuals, tol, max_iter


@attrs.frozen
class CGResult:
    """The solution ``x`` (same shape as ``b``), and per chain the iterations it took and its final relative
    residual, ``(B,)`` (int64, real)."""

    x: Tensor
    iterations: Tensor
    residual: Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``Re <a, b>`` per chain, ``(B,)``: for a hermitian operator the CG coefficients are real."""
    return (a.conj() * b).real.flatten(1).sum(1)


@torch.no_grad()
def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    tol: float,
    max_iter: int,
    x0: Tensor | None = None,
    what: str = "",
) -> CGResult:
    """Solve ``A x = b`` for a hermitian positive ``A`` (``apply(v) = A v`` on batches ``(B, ...)``).

    ``b``: ``(B, ...)`` complex or real. Each chain converges to ``|b - A x| <= tol |b|``; a zero ``b``
    gives ``x = 0`` at once. Raises :class:`CGNotConverged` if any chain has not converged after
    ``max_iter`` iterations (``what`` names the solve in the message). The residual is the recursive
    one; the final true residual is recomputed and returned (it differs at the level of round-off).
    """
    batch = b.shape[0]
    view = (batch,) + (1,) * (b.dim() - 1)
    b_norm = _dot(b, b).sqrt()
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    target = (tol * b_norm) ** 2
    done = rr <= target
    iterations = torch.zeros(batch, dtype=torch.int64, device=b.device)
    for _ in range(max_iter):
        if bool(done.all()):
            break
        ap = apply(p)
        pap = _dot(p, ap)
        alpha = torch.where(done, torch.zeros_like(rr), rr / torch.where(done, torch.ones_like(pap), pap))
        x = x + alpha.view(view) * p
        r = r - alpha.view(view) * ap
        rr_new = _dot(r, r)
        iterations += (~done).to(torch.int64)
        beta = torch.where(done, torch.zeros_like(rr), rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)))
        p = torch.where(done.view(view), p, r + beta.view(view) * p)
        rr = torch.where(done, rr, rr_new)
        done = done | (rr <= target)
    residual = (_dot(b - apply(x), b - apply(x)).sqrt() / torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm)))
    if not bool(done.all()):
        bad = (~done).nonzero().flatten().tolist()
        raise CGNotConverged(bad, [float(residual[i]) for i in bad], tol, max_iter, what)
    return CGResult(x=x, iterations=iterations, residual=residual)

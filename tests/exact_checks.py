"""The statistical check of the test suite: a run's estimate against the exact value, in standard errors."""

from __future__ import annotations

import numpy as np
import torch
from lattice_flows_u1 import exact

#: Standard errors a mean may lie from the exact value (fixed seeds: a failure is a real change).
PULL = 4.0


def check_against_exact(summary, row: str, max_error: float) -> None:
    """Row ``row`` of :meth:`Simulation.summary`: reliable, error below ``max_error`` (so the check
    tests something), and within ``PULL`` standard errors of the exact value."""
    r = summary.loc[row]
    assert r["reliable"], f"{row}: {r['note']}"
    assert r["error"] < max_error, f"{row}: error {r['error']:.3g} too large to test anything"
    assert abs(r["mean"] - r["exact"]) < PULL * r["error"], (
        f"{row}: {r['mean']:.6f} +- {r['error']:.2g} vs exact {r['exact']:.6f} (pull {r['pull']:.2f})"
    )


def check_jarzynski_u1(work, beta_prior: float, beta: float, lattice_shape, max_error: float = 0.05) -> None:
    """Jarzynski's equality for protocols from ``u1_wilson`` at ``beta_prior`` to ``beta``: ``log <exp(-W)>``
    over the works ``(B,)`` against the exact ``log Z(beta) - log Z(beta_prior) = -V int (1 - <cos x_P>(b)) db``
    (the exact plaquette of ``lattice_flows_u1.exact``, Gauss-Legendre with 32 nodes), within ``PULL`` standard
    errors (delta method), the error below ``max_error`` (so the check tests something)."""
    volume = int(np.prod(lattice_shape))
    nodes, weights = np.polynomial.legendre.leggauss(32)
    mid, half = 0.5 * (beta + beta_prior), 0.5 * (beta - beta_prior)
    expected = -volume * half * sum(
        w * (1 - exact.plaquette(mid + half * float(t), tuple(lattice_shape))) for t, w in zip(nodes, weights)
    )
    work = work.double()
    e = torch.exp(-(work - work.min()))
    estimate = float(torch.log(e.mean()) - work.min())
    error = float(e.std() / e.mean()) / e.numel() ** 0.5
    assert error < max_error, f"log <exp(-W)>: error {error:.3g} too large to test anything"
    assert abs(estimate - expected) < PULL * error, (
        f"log <exp(-W)> = {estimate:.4f} +- {error:.2g} vs exact {expected:.4f} (pull {(estimate - expected) / error:.1f})"
    )

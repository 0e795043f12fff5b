"""The statistical check of the test suite: a run's estimate against the exact value, in standard errors."""

from __future__ import annotations

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

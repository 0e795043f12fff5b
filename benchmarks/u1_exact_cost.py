"""Cost of the exact 2D U(1) values that every summary compares with, against beta: the basis of
``u1_wilson``'s bound ``beta <= 1e4`` (``lattice_flows_u1.action.U1Wilson.BETA_MAX``).

For each beta: the median wall time (over ``--repeats`` fresh computations, caches cleared) of the
plaquette, <Q^2> and the 2x2 Wilson loop on an L x L lattice, and the ratio to the previous beta.

    python benchmarks/u1_exact_cost.py --betas 1e2 1e3 1e4 1e5 --shape 8
"""

from __future__ import annotations

import argparse
import statistics
import time

from lattice_flows_u1 import exact


def _clear_caches() -> None:
    for name in ("_characters", "_gauss_legendre"):
        cached = getattr(exact, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def seconds(beta: float, L: int, repeats: int) -> float:
    """Median seconds of the three exact values at ``beta`` on ``L x L``, caches cleared before each."""
    times = []
    for _ in range(repeats):
        _clear_caches()
        start = time.perf_counter()
        exact.plaquette(beta, (L, L))
        exact.topological_charge_squared(beta, (L, L))
        exact.wilson_loop(beta, (L, L), 2, 2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[1e2, 1e3, 1e4, 1e5])
    parser.add_argument("--shape", type=int, default=8, help="L of the L x L lattice (default 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'beta':>10} {'median s':>10} {'ratio':>8}")
    previous = None
    for beta in args.betas:
        t = seconds(beta, args.shape, args.repeats)
        ratio = "" if previous is None else f"{t / previous:8.1f}"
        print(f"{beta:10.3g} {t:10.3f} {ratio:>8}", flush=True)
        previous = t


if __name__ == "__main__":
    main()

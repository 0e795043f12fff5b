"""What the exact range and the stable root cost (issue 13, item 7): medians, and the ratio to the code before.

Times, as medians over repeats, (1) the FTHMC force through ``u1_plaquette_poisson`` (forward and the
backward to the latent links) and (2) ``CircularSpline.inverse`` on many sites, with the code as it is
and with the code as it was: ``wrap_exact`` replaced by the plain ``wrap``, the shared spline's clamp
into ``[-pi, pi]`` removed, and the one-form root (``benchmarks/rq_root_accuracy.py``). Ratios above 1
are the cost of the fixes.

    python benchmarks/circle_map_cost.py [--shape 16] [--chains 16] [--repeats 15] [--rounds 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path
import importlib.util

import torch

import lattice_flows_u1.flows.circle_maps as circle_maps
import lattice_flows_u1.flows.poisson as poisson
from lattice_flows_u1.geometry import wrap


def _one_form_root():
    path = Path(__file__).resolve().parent / "rq_root_accuracy.py"
    spec = importlib.util.spec_from_file_location("rq_root_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.one_form_root


@contextlib.contextmanager
def as_before():
    """The circle maps and the poisson flow as they were before the fixes (plain wrap, one-form root, no clamp)."""
    saved = (circle_maps.wrap_exact, poisson.wrap_exact, circle_maps.rational_quadratic_root,
             poisson.rational_quadratic_root, poisson.SharedCircleSpline._closed)
    root = _one_form_root()
    circle_maps.wrap_exact = poisson.wrap_exact = wrap
    circle_maps.rational_quadratic_root = poisson.rational_quadratic_root = root
    poisson.SharedCircleSpline._closed = staticmethod(lambda angle: angle)
    try:
        yield
    finally:
        (circle_maps.wrap_exact, poisson.wrap_exact, circle_maps.rational_quadratic_root,
         poisson.rational_quadratic_root, closed) = saved
        poisson.SharedCircleSpline._closed = staticmethod(closed)


def median_seconds(fn, repeats: int, inner: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, default=16, help="lattice size L of L x L (default 16)")
    parser.add_argument("--chains", type=int, default=16, help="configurations per batch (default 16)")
    parser.add_argument("--sites", type=int, default=100_000, help="sites for the spline inverse (default 1e5)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5, help="calls per timed repeat")
    parser.add_argument("--rounds", type=int, default=6, help="alternations of before and now (default 6)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    L = args.shape
    flow = poisson.PlaquettePoissonFlow(poisson.PlaquettePoissonFlow.Config(n_bins=128, von_mises_beta=6.0), (L, L)).double()
    for p in flow.parameters():
        p.requires_grad_(False)
    z = (torch.rand(args.chains, 2, L, L, generator=g, dtype=torch.float64) * 2 - 1) * torch.pi

    def force():
        zz = z.clone().requires_grad_(True)
        x, logdet = flow(zz)
        (-6.0 * torch.cos(x).sum() - logdet.sum()).backward()

    spline = circle_maps.CircularSpline(n_bins=8)
    params = 3 * torch.randn(spline.n_params, args.sites, generator=g, dtype=torch.float64)
    y = (torch.rand(args.sites, generator=g, dtype=torch.float64) * 2 - 1) * torch.pi

    def inverse():
        with torch.no_grad():
            spline.inverse(y, params)

    print(f"medians over {args.rounds} alternations of medians of {args.repeats} repeats x {args.inner} calls, "
          f"{args.threads} thread(s)")
    print(f"{'what':46} {'before (s)':>11} {'now (s)':>10} {'now/before':>10}")
    for name, fn in ((f"poisson flow force, {args.chains} x {L}x{L}, 128 bins", force),
                     (f"CircularSpline.inverse, {args.sites} sites, 8 bins", inverse)):
        # alternate, so that a change of load on a shared machine hits both alike
        before, now = [], []
        for _ in range(args.rounds):
            with as_before():
                before.append(median_seconds(fn, args.repeats, args.inner))
            now.append(median_seconds(fn, args.repeats, args.inner))
        b, n = statistics.median(before), statistics.median(now)
        print(f"{name:46} {b:11.4g} {n:10.4g} {n / b:10.3f}")


if __name__ == "__main__":
    main()

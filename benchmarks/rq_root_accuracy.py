"""Accuracy of the rational-quadratic spline inverse (issue 13, item 7): the root form by the sign of b.

For bins of circular splines with raw parameters ``scale * N(0, 1)`` (8 bins), points ``xi = 1 - 10^-u``
(``u`` uniform in ``[0, 6]``: near the right knot, where ``b < 0``) are sent through the bin and back by
:func:`rational_quadratic_root`; the error of the root in ``x`` times ``h'(x)``, in ``eps`` of the dtype,
is printed as its maximum over the sample, for the one-form root the code had before
(``2c / (-b - sqrt(disc))`` for every ``b``) and for the root now used. Then the round trip
``x -> h(x) -> h^{-1}`` of :class:`CircularSpline` (shift 0), and how many inverse values fall outside
``[-pi, pi)``.

    python benchmarks/rq_root_accuracy.py [--n 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch

from lattice_flows_u1.flows.circle_maps import CircularSpline, rational_quadratic_root

SCALES = (3, 5, 7, 10)


def one_form_root(dy, h, s, d0, d1):
    """The root as it was: ``2c / (-b - sqrt(disc))`` for both signs of ``b`` (cancels for ``b < 0``)."""
    c2 = d0 + d1 - 2 * s
    a = h * (s - d0) + dy * c2
    b = h * d0 - dy * c2
    c = -s * dy
    return 2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp(min=0)))


def root_errors(scale: float, n: int, seed: int, dtype) -> dict[str, float]:
    """Max of ``|xi' - xi| w h'(x) / eps`` near the right knot, for both root forms."""
    spline = CircularSpline(n_bins=8)
    g = torch.Generator().manual_seed(seed)
    params = (scale * torch.randn(spline.n_params, n, generator=g, dtype=torch.float64)).to(dtype)
    _, _, widths, heights, _, derivatives = spline._tables(params)
    k = torch.randint(0, spline.n_bins, (1, n), generator=g)
    w, h = widths.gather(0, k)[0], heights.gather(0, k)[0]
    d0, d1 = derivatives.gather(0, k)[0], derivatives.gather(0, (k + 1) % spline.n_bins)[0]
    s = h / w
    xi = (1 - 10 ** (-6 * torch.rand(n, generator=g, dtype=torch.float64))).to(dtype)
    xi1 = xi * (1 - xi)
    D = s + (d0 + d1 - 2 * s) * xi1
    dy = h * (s * xi * xi + d0 * xi1) / D
    slope = s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2) / D**2
    eps = torch.finfo(dtype).eps
    out = {}
    for name, root in (("one form", one_form_root), ("by sign of b", rational_quadratic_root)):
        r = root(dy, h, s, d0, d1)
        out[name] = float(((r.double() - xi.double()).abs() * w.double() * slope.double() / eps).max())
    return out


def round_trip(scale: float, n: int, seed: int, dtype) -> tuple[float, float, int]:
    """``(max |x' - x| h'/eps, max |h(h^{-1}(y)) - y| / eps, inverse values outside [-pi, pi))``."""
    spline = CircularSpline(n_bins=8)
    g = torch.Generator().manual_seed(seed)
    params = (scale * torch.randn(spline.n_params, n, generator=g, dtype=torch.float64)).to(dtype)
    params[-1] = 0.0
    x = ((2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * math.pi).to(dtype)
    y, logd = spline.forward(x, params)
    back, _ = spline.inverse(y, params)
    again, _ = spline.forward(back, params)
    eps = torch.finfo(dtype).eps

    def gap(a, b):
        return (torch.remainder(a.double() - b.double() + math.pi, 2 * math.pi) - math.pi).abs()

    pi = torch.tensor(math.pi, dtype=dtype)
    outside = int(((back < -pi) | (back >= pi)).sum())
    return float((gap(back, x) * torch.exp(logd.double()) / eps).max()), float((gap(again, y) / eps).max()), outside


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="points per scale and dtype (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("error x h'/eps near the right knot (max over the sample), and the spline round trip now")
    print(f"{'dtype':8} {'scale':>5} {'one form':>10} {'by sign':>9} {'|dx| h/eps':>11} {'|dy|/eps':>9} {'outside':>8}")
    for dtype in (torch.float64, torch.float32):
        for scale in SCALES:
            e = root_errors(scale, args.n, args.seed + scale, dtype)
            dx, dy, outside = round_trip(scale, args.n, args.seed + 100 + scale, dtype)
            name = str(dtype).removeprefix("torch.")
            print(f"{name:8} {scale:5} {e['one form']:10.3g} {e['by sign of b']:9.3g} {dx:11.3g} {dy:9.3g} {outside:8d}")


if __name__ == "__main__":
    main()

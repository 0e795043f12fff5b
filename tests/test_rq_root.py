"""Numerics of the circular splines (issue 13, item 7): the rational-quadratic root without
cancellation, and every forward and inverse of a circle map landing in ``[-pi, pi)`` exactly.

The error measure is the issue's: the error of the root in ``x`` times ``h'(x)``, in units of the
dtype's ``eps`` (the backward error in ``y``; ``1`` is the best a root can do). Before the fix (one
root form for both signs of ``b``) it reached 5e4 to 8e5 at raw parameter scales 3 to 10, with ``y``
near a bin's right knot; the issue quotes <= 270 for the other root form.
"""

from __future__ import annotations

import math

import pytest
import torch

from lattice_flows_u1.flows.circle_maps import NCP, CircularSpline, rational_quadratic_root, wrap_exact
from lattice_flows_u1.flows.poisson import PlaquettePoissonFlow, SharedCircleSpline
from lattice_flows_u1.geometry import wrap

from benchmark_scripts import load_benchmark

DTYPES = [torch.float64, torch.float32]
SCALES = [3, 5, 7, 10]
#: The bound the issue quotes for the stable root, in eps of the dtype.
BOUND = 270


def _bins(spline: CircularSpline, n: int, scale: float, seed: int, dtype):
    """``n`` bins ``(w, h, d0, d1)`` of splines with raw parameters ``scale * N(0, 1)``, each ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    params = (scale * torch.randn(spline.n_params, n, generator=g, dtype=torch.float64)).to(dtype)
    _, _, widths, heights, _, derivatives = spline._tables(params)
    k = torch.randint(0, spline.n_bins, (1, n), generator=g)
    pick = lambda t, i: t.gather(0, i).squeeze(0)  # noqa: E731
    return pick(widths, k), pick(heights, k), pick(derivatives, k), pick(derivatives, (k + 1) % spline.n_bins), g


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
def test_root_near_the_right_knot_is_accurate(scale, dtype):
    """``xi`` near 1 (``1 - 10^-u``, ``u`` uniform in ``[0, 6]``), where ``b < 0`` made the old form cancel."""
    w, h, d0, d1, g = _bins(CircularSpline(n_bins=8), 20000, scale, seed=scale, dtype=dtype)
    s = h / w
    xi = (1 - 10 ** (-6 * torch.rand(w.shape, generator=g, dtype=torch.float64))).to(dtype)
    xi1 = xi * (1 - xi)
    D = s + (d0 + d1 - 2 * s) * xi1
    dy = h * (s * xi * xi + d0 * xi1) / D
    slope = s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2) / D**2  # h'(x)
    root = rational_quadratic_root(dy, h, s, d0, d1)
    error = ((root.double() - xi.double()).abs() * w.double() * slope.double() / torch.finfo(dtype).eps).max()
    assert float(error) <= BOUND, f"scale {scale}, {dtype}: error x h'/eps reached {float(error):.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
def test_spline_round_trip_is_accurate(scale, dtype):
    """``x -> h(x) -> h^{-1}``: ``|x' - x| h'(x) / eps`` and ``|h(h^{-1}(y)) - y| / eps`` within the bound
    (the first includes the forward map's own round-off of ``y``)."""
    # the benchmark's measurement (benchmarks/rq_root_accuracy.py), on its own 20000 points per case;
    # it leaves the spline's shift at 0: a shift t ~ 10 would round y at |t| eps, no error of the inverse
    x_error, y_error, _ = load_benchmark("rq_root_accuracy").round_trip(scale, 20000, 100 + scale, dtype)
    assert x_error <= BOUND and y_error <= BOUND, (x_error, y_error)


def _edge_angles(dtype) -> torch.Tensor:
    """Angles at and around ``±pi`` and ``0`` in ``dtype``, a few ulps either side, and a few turns away."""
    pi = torch.tensor(math.pi, dtype=dtype)
    values = [pi, -pi, torch.zeros((), dtype=dtype)]
    for v in (pi, -pi):
        up, down = v.clone(), v.clone()
        for _ in range(4):
            up, down = torch.nextafter(up, up + 1), torch.nextafter(down, down - 1)
            values += [up, down]
    base = torch.stack(values)
    return torch.cat([base, base + 2 * pi, base - 2 * pi, base + 6 * pi])


def _in_range(t: torch.Tensor) -> bool:
    pi = torch.tensor(math.pi, dtype=t.dtype)
    return bool(((t >= -pi) & (t < pi)).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wrap_exact_is_in_range_and_right(dtype):
    x = _edge_angles(dtype)
    y = wrap_exact(x)
    assert _in_range(y)
    # the same angle: within a few ulps of x modulo 2 pi
    assert float((torch.remainder(y.double() - x.double() + math.pi, 2 * math.pi) - math.pi).abs().max()) < 1e-5
    assert torch.equal(wrap_exact(y), y)  # idempotent


def test_wrap_alone_leaves_the_interval():
    """Why :func:`wrap_exact` exists: the fast wrap maps the float just below pi to just below -pi."""
    below_pi = torch.nextafter(torch.tensor(math.pi, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert not _in_range(wrap(below_pi.reshape(1)))
    assert _in_range(wrap_exact(below_pi.reshape(1)))


CIRCLE_MAPS = [CircularSpline(n_bins=8), CircularSpline(n_bins=2), NCP(n_mixture=3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=["spline8", "spline2", "ncp3"])
@pytest.mark.parametrize("scale", [0.0, 1.0, 5.0, 10.0])
def test_circle_maps_return_angles_in_range(cmap, scale, dtype):
    """Forward and inverse at the edges, for random parameters (shift ``t`` included), in ``[-pi, pi)``."""
    angles = _edge_angles(dtype)
    g = torch.Generator().manual_seed(int(scale * 10) + cmap.n_params)
    n_params = 64
    x = angles.repeat(n_params)
    params = (scale * torch.randn(cmap.n_params, 1, n_params, generator=g, dtype=torch.float64)).to(dtype)
    params = params.expand(-1, len(angles), -1).reshape(cmap.n_params, -1)
    if scale:  # a shift that lands the result on the edges too
        params = params.clone()
        params[-1, : len(angles)] = 0.0
    y, _ = cmap.forward(x, params)
    assert _in_range(y), f"forward: {y[~((y >= -math.pi) & (y < math.pi))][:4].tolist()}"
    back, _ = cmap.inverse(x, params)
    assert _in_range(back), f"inverse: {back.min().item()!r}, {back.max().item()!r}"
    assert torch.isfinite(back).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spline_inverse_near_a_flat_right_knot_stays_in_its_bin(dtype):
    """A root past its bin (``y - y_0`` above ``h`` by round-off, tiny slope at the knot) once gave
    ``x`` far outside ``[-pi, pi)``, which the forward map then sent 2.9 away from ``y`` (float32)."""
    spline = CircularSpline(n_bins=8)
    g = torch.Generator().manual_seed(10)
    n = 20000
    params = (10 * torch.randn(spline.n_params, n, generator=g, dtype=torch.float64)).to(dtype)
    x = ((2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * math.pi).to(dtype)
    y, _ = spline.forward(x, params)
    back, _ = spline.inverse(y, params)
    assert _in_range(back)
    again, _ = spline.forward(back, params)
    worst = (torch.remainder(again.double() - y.double() + math.pi, 2 * math.pi) - math.pi).abs().max()
    assert float(worst) <= BOUND * torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("von_mises_beta", [0.0, 6.0])
def test_poisson_flow_and_its_spline_stay_in_range(von_mises_beta, dtype):
    """The shared spline returns ``[-pi, pi]`` (closed, so ``h(u) - u`` is continuous); the flow ``[-pi, pi)``."""
    pi = float(torch.tensor(math.pi, dtype=dtype))
    spline = SharedCircleSpline(16)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in spline.parameters():
            p.copy_(3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    angles = _edge_angles(dtype)
    for out, _ in (spline.forward(angles), spline.inverse(angles)):
        assert bool(((out >= -pi) & (out <= pi)).all())
    flow = PlaquettePoissonFlow(PlaquettePoissonFlow.Config(n_bins=16, von_mises_beta=von_mises_beta), (4, 4)).to(dtype)
    z = angles[torch.randint(0, len(angles), (8, 2, 4, 4), generator=g)]
    with torch.no_grad():
        x, _ = flow(z)
        back, _ = flow.inverse(x)
    assert _in_range(x)
    assert _in_range(back)
    # and the round trip is the identity on the circle
    gap = (torch.remainder(back.double() - z.double() + math.pi, 2 * math.pi) - math.pi).abs().max()
    assert float(gap) < (1e-9 if dtype == torch.float64 else 1e-3)


def test_the_accuracy_benchmark_runs(capsys):
    """``benchmarks/rq_root_accuracy.py`` (the figures quoted for item 7) runs end to end on a small sample."""
    module = load_benchmark("rq_root_accuracy")
    module.main(["--n", "500"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 2 * len(module.SCALES)
    for line in lines[2:]:
        *_, by_sign, dx, dy, outside = line.split()
        assert float(by_sign) <= BOUND and float(dx) <= BOUND and float(dy) <= BOUND and outside == "0", line


def test_the_cost_benchmark_runs(capsys):
    """``benchmarks/circle_map_cost.py`` runs end to end on a tiny case (its timings are not tests)."""
    module = load_benchmark("circle_map_cost")
    module.main(["--shape", "4", "--chains", "2", "--sites", "100", "--repeats", "1", "--inner", "1", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(float(line.split()[-1]) > 0 for line in lines[2:])
    # and the code is restored afterwards
    assert circle_maps_module().wrap_exact is wrap_exact


def circle_maps_module():
    import lattice_flows_u1.flows.circle_maps as module

    return module

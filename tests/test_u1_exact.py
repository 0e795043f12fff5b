"""Exact 2D U(1) results (``lattice_flows_u1.exact``) and the exact sampler, against independent routes.

Routes used here and nowhere in the module: brute-force integration over link or plaquette angles on
tiny lattices (spectrally accurate periodic trapezoid sums for smooth integrands, adaptive scipy
quadrature over the regions of fixed charge for ``Q``), Bessel-function identities via
``scipy.special``, infinite-volume limits, and Monte Carlo with the exact sampler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import ive

from lattice_flows_u1 import exact
from lattice_flows_u1.exact_sampling import links_from_plaquettes, sample_exact
from lattice_flows_u1.geometry import plaquette_angles, wrap

PI = math.pi


def bessel_ratio(n, beta):
    return ive(n, beta) / ive(0, beta)


# --------------------------------------------------------------------------------------------------
# PHYSICS.md's reference numbers


def test_physics_md_examples():
    assert exact.plaquette(2.0, (8, 8)) == pytest.approx(0.6978, abs=5e-5)
    assert exact.topological_charge_squared(2.0, (8, 8)) == pytest.approx(1.239, abs=5e-4)
    assert exact.topological_charge_squared(6.0, (8, 8)) == pytest.approx(0.279, abs=5e-4)


# --------------------------------------------------------------------------------------------------
# brute force on tiny lattices


def _wilson_loop_path(x: torch.Tensor, R: int, T: int) -> torch.Tensor:
    """Angle of the R x T loop at the origin, summed link by link along its path; ``(B,)``."""
    L0, L1 = x.shape[-2:]
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(R):
        total += x[:, 0, i % L0, 0] - x[:, 0, i % L0, T % L1]
    for j in range(T):
        total += x[:, 1, R % L0, j % L1] - x[:, 1, 0, j % L1]
    return total


def test_2x2_links_brute_force():
    """Integrate over the 5 link angles a maximal-tree gauge leaves on 2x2: the integrand is a smooth
    periodic function of them, so the K-point trapezoid rule per angle is exact to ~rho_K."""
    beta, K = 1.0, 16
    grid = -PI + 2 * PI * torch.arange(K, dtype=torch.float64) / K
    free = torch.cartesian_prod(*[grid] * 5)  # (K^5, 5)
    x = torch.zeros(len(free), 2, 2, 2, dtype=torch.float64)
    # tree links x_0(0, 0), x_0(0, 1), x_1(0, 0) stay 0
    x[:, 0, 1, 0], x[:, 0, 1, 1], x[:, 1, 0, 1], x[:, 1, 1, 0], x[:, 1, 1, 1] = free.T
    xp = plaquette_angles(x)
    weight = torch.exp(beta * (torch.cos(xp) - 1).sum(dim=(1, 2)))
    weight = weight / weight.sum()

    plaq = (weight * torch.cos(xp).mean(dim=(1, 2))).sum().item()
    assert exact.plaquette(beta, (2, 2)) == pytest.approx(plaq, rel=0, abs=1e-11)
    assert exact.action_density(beta, (2, 2)) == pytest.approx(beta * (1 - plaq), rel=0, abs=1e-11)
    for R, T in [(1, 1), (2, 1), (1, 2), (2, 2)]:
        w = (weight * torch.cos(_wilson_loop_path(x, R, T))).sum().item()
        assert exact.wilson_loop(beta, (2, 2), R, T) == pytest.approx(w, rel=0, abs=1e-11), (R, T)


@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_two_plaquettes_bessel_addition(beta):
    """On 1x2 the plaquettes are x_0(0,0) - x_0(0,1) and its negative, so <cos x_P> = I_1(2b)/I_0(2b);
    the character sum gets there through Neumann's addition theorem."""
    assert exact.plaquette(beta, (1, 2)) == pytest.approx(bessel_ratio(1, 2 * beta), rel=1e-13)
    assert exact.plaquette(beta, (2, 1)) == pytest.approx(bessel_ratio(1, 2 * beta), rel=1e-13)
    assert exact.topological_charge_squared(beta, (1, 2)) == 0.0
    assert exact.topological_charge_distribution(beta, (2, 1)) == {0: 1.0}


def test_single_plaquette_is_trivial():
    # on 1x1 the plaquette angle x_0 + x_1 - x_0 - x_1 vanishes identically
    assert exact.plaquette(1.3, (1, 1)) == pytest.approx(1.0, abs=1e-15)
    assert exact.topological_charge_squared(1.3, (1, 1)) == 0.0


def _charge_one_probability_v3(beta):
    """P(Q = 1) on a 3-plaquette lattice: theta_3 = wrap(-t1 - t2), so Q = 1 exactly when t1 + t2 > pi."""
    f = lambda t2, t1: math.exp(beta * (math.cos(t1) + math.cos(t2) + math.cos(t1 + t2) - 3))  # noqa: E731
    p1, _ = integrate.dblquad(f, 0, PI, lambda t1: PI - t1, PI, epsabs=1e-14, epsrel=1e-12)
    K = 64  # the normalisation has a smooth periodic integrand: trapezoid
    g = -PI + 2 * PI * np.arange(K) / K
    t1, t2 = np.meshgrid(g, g, indexing="ij")
    Z = np.mean(np.exp(beta * (np.cos(t1) + np.cos(t2) + np.cos(t1 + t2) - 3))) * (2 * PI) ** 2
    return p1 / Z


def _charge_one_probability_v4(beta):
    """P(Q = 1) on a 4-plaquette lattice: Q = 1 exactly when t1 + t2 + t3 > pi."""
    f = lambda t3, t2, t1: math.exp(  # noqa: E731
        beta * (math.cos(t1) + math.cos(t2) + math.cos(t3) + math.cos(t1 + t2 + t3) - 4)
    )
    # t1 + t2 > 0 (else the t3 range is empty), t3 in [pi - t1 - t2, pi]
    p1, _ = integrate.tplquad(
        f, -PI, PI, lambda t1: -t1, PI, lambda t1, t2: PI - t1 - t2, PI, epsabs=1e-13, epsrel=1e-11
    )
    K = 48
    g = -PI + 2 * PI * np.arange(K) / K
    t1, t2, t3 = np.meshgrid(g, g, g, indexing="ij")
    log_w = beta * (np.cos(t1) + np.cos(t2) + np.cos(t3) + np.cos(t1 + t2 + t3) - 4)
    Z = np.mean(np.exp(log_w)) * (2 * PI) ** 3
    return p1 / Z


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_charge_squared_brute_force_v3(beta):
    expected = 2 * _charge_one_probability_v3(beta)
    for shape in [(1, 3), (3, 1)]:
        assert exact.topological_charge_squared(beta, shape) == pytest.approx(expected, rel=1e-10)


def test_charge_squared_and_distribution_brute_force_v4():
    beta = 1.0
    p1 = _charge_one_probability_v4(beta)
    for shape in [(2, 2), (1, 4)]:
        assert exact.topological_charge_squared(beta, shape) == pytest.approx(2 * p1, rel=1e-9)
        dist = exact.topological_charge_distribution(beta, shape)
        assert dist == pytest.approx({-1: p1, 0: 1 - 2 * p1, 1: p1}, rel=1e-9)


# --------------------------------------------------------------------------------------------------
# infinite volume


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0, 20.0])
def test_infinite_volume_plaquette_and_loops(beta):
    i1_i0 = bessel_ratio(1, beta)
    assert exact.plaquette_infinite_volume(beta) == pytest.approx(i1_i0, rel=1e-13)
    assert exact.plaquette(beta, (64, 64)) == pytest.approx(i1_i0, rel=1e-12)
    assert exact.wilson_loop(beta, (64, 64), 3, 2) == pytest.approx(i1_i0**6, rel=1e-12)


def _chi_by_quad(beta):
    def moment(f):
        value, _ = integrate.quad(lambda p: f(p) * math.exp(beta * (math.cos(p) - 1)), -PI, PI, epsabs=0, epsrel=1e-13)
        return value

    return moment(lambda p: (p / (2 * PI)) ** 2) / moment(lambda p: 1.0)


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0, 20.0])
def test_infinite_volume_susceptibility(beta):
    chi = _chi_by_quad(beta)
    assert exact.susceptibility_infinite_volume(beta) == pytest.approx(chi, rel=1e-11)
    assert exact.topological_charge_squared(beta, (64, 64)) / 64**2 == pytest.approx(chi, rel=1e-10)


def test_susceptibility_large_beta_asymptotics():
    beta = 200.0
    assert exact.susceptibility_infinite_volume(beta) == pytest.approx(1 / (4 * PI**2 * beta), rel=1e-2)
    assert exact.susceptibility_infinite_volume(1e-4) == pytest.approx(1 / 12, rel=1e-4)  # uniform angles


def test_no_overflow_at_large_volume_and_beta():
    beta, shape = 20.0, (256, 256)
    assert exact.plaquette(beta, shape) == pytest.approx(bessel_ratio(1, beta), rel=1e-12)
    assert exact.action_density(beta, shape) == pytest.approx(beta * (1 - bessel_ratio(1, beta)), rel=1e-10)
    q2 = exact.topological_charge_squared(beta, shape)
    assert q2 / 256**2 == pytest.approx(_chi_by_quad(beta), rel=1e-10)
    dist = exact.topological_charge_distribution(beta, shape)
    assert all(math.isfinite(p) for p in dist.values())
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)
    assert sum(q * q * p for q, p in dist.items()) == pytest.approx(q2, rel=1e-10)
    assert math.isfinite(exact.wilson_loop(beta, shape, 256, 255))


# --------------------------------------------------------------------------------------------------
# the two routes to <Q^2>, and internal consistency of the loops


@pytest.mark.parametrize(
    "beta, shape",
    [
        (0.05, (5, 1)), (0.5, (2, 3)), (1.0, (4, 6)), (2.0, (8, 8)),
        (6.0, (8, 8)), (3.0, (16, 16)), (0.3, (32, 32)), (60.0, (12, 10)),
    ],
)
def test_charge_distribution_matches_charge_squared(beta, shape):
    dist = exact.topological_charge_distribution(beta, shape)
    assert list(dist) == sorted(dist)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-13)
    assert all(p > 0 and dist.get(-q) == p for q, p in dist.items())  # symmetric
    assert max(abs(q) for q in dist) < shape[0] * shape[1] / 2  # |Q| < V/2
    assert sum(q * q * p for q, p in dist.items()) == pytest.approx(
        exact.topological_charge_squared(beta, shape), rel=1e-10, abs=1e-14
    )


def test_wilson_loop_limits():
    beta, shape = 1.7, (5, 7)
    assert exact.wilson_loop(beta, shape, 1, 1) == pytest.approx(exact.plaquette(beta, shape), rel=1e-14)
    assert exact.wilson_loop(beta, shape, 5, 7) == pytest.approx(1.0, rel=1e-14)
    # W depends on the area only
    w23 = exact.wilson_loop(beta, (6, 6), 2, 3)
    assert exact.wilson_loop(beta, (6, 6), 3, 2) == pytest.approx(w23, rel=1e-14)
    assert exact.wilson_loop(beta, (6, 6), 6, 1) == pytest.approx(w23, rel=1e-14)
    # a strip of L_0 x T plaquettes and the complementary strip give the same Polyakov pair, conjugated
    assert exact.wilson_loop(beta, shape, 5, 2) == pytest.approx(exact.wilson_loop(beta, shape, 5, 5), rel=1e-13)
    # all plaquettes but one: the remaining plaquette, conjugated
    assert exact.wilson_loop(beta, (1, 5), 1, 4) == pytest.approx(exact.plaquette(beta, (1, 5)), rel=1e-13)
    areas = [exact.wilson_loop(beta, (12, 12), a, 1) for a in range(1, 7)]
    assert all(w1 > w2 > 0 for w1, w2 in zip(areas, areas[1:]))


def test_character_truncation_bound():
    """The sums stop at n_max; scipy's Bessel functions confirm rho_{n_max + 1} is negligible there."""
    from lattice_flows_u1.exact import _n_max

    for beta in [1e-3, 0.5, 2.0, 20.0, 300.0]:
        assert bessel_ratio(_n_max(beta) + 1, beta) < 1e-18


# --------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf"), "2", True, None])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        exact.plaquette(beta, (4, 4))
    with pytest.raises(ValueError, match="beta"):
        exact.susceptibility_infinite_volume(beta)


@pytest.mark.parametrize("shape", [(0, 4), (4,), (4, 4, 4), (2.5, 4), "8x8", (True, 2), (-1, 3), None])
def test_bad_shape(shape):
    for f in (exact.plaquette, exact.topological_charge_squared, exact.topological_charge_distribution):
        with pytest.raises(ValueError, match="shape"):
            f(1.0, shape)


@pytest.mark.parametrize("R, T", [(0, 1), (5, 1), (1, 0), (1, 7), (1.5, 2), (True, 2)])
def test_bad_loop_extent(R, T):
    with pytest.raises(ValueError, match="must be an integer in"):
        exact.wilson_loop(1.0, (4, 6), R, T)


# --------------------------------------------------------------------------------------------------
# the exact sampler


@given(L0=st.integers(1, 6), L1=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_links_from_plaquettes_reproduce_them(L0, L1, seed):
    g = torch.Generator().manual_seed(seed)
    theta = wrap(6 * torch.rand(3, L0, L1, generator=g, dtype=torch.float64))
    theta[:, -1, -1] = wrap(theta[:, -1, -1] - theta.sum(dim=(1, 2)))  # impose sum = 0 mod 2 pi
    holonomies = wrap(6 * torch.rand(3, 2, generator=g, dtype=torch.float64))
    x = links_from_plaquettes(theta, holonomies)
    tol = 1e-12 * (L0 + L1)
    assert wrap(plaquette_angles(x) - theta).abs().max() < tol
    assert wrap(x[:, 0, :, 0].sum(dim=1) - holonomies[:, 0]).abs().max() < tol  # along n_1 = 0
    assert wrap(x[:, 1, 0, :].sum(dim=1) - holonomies[:, 1]).abs().max() < tol  # along n_0 = 0


def _within(mean, std, n, expected, n_sigma=5.0):
    return abs(mean - expected) < n_sigma * std / math.sqrt(n)


@pytest.mark.parametrize("beta, shape, n", [(2.0, (8, 8), 4000), (6.0, (8, 8), 4000), (1.0, (4, 6), 4000)])
def test_sampler_reproduces_exact_observables(beta, shape, n, device):
    g = torch.Generator(device=device).manual_seed(1234)
    x = sample_exact(beta, n, shape, generator=g, dtype=torch.float64, device=device).cpu()
    xp = plaquette_angles(x)
    cos_p = torch.cos(xp).mean(dim=(1, 2))
    q = torch.round(wrap(xp).sum(dim=(1, 2)) / (2 * PI))
    q2 = q**2
    assert _within(cos_p.mean().item(), cos_p.std().item(), n, exact.plaquette(beta, shape))
    assert _within(q2.mean().item(), q2.std().item(), n, exact.topological_charge_squared(beta, shape))
    dist = exact.topological_charge_distribution(beta, shape)
    for value in (0, 1, 2):
        hits = (q.abs() == value).double()
        assert _within(hits.mean().item(), hits.std().item(), n, dist.get(value, 0.0) * (1 if value == 0 else 2))
    # the fibre over the plaquettes is uniform: random gauge -> <cos x_mu(n)> = 0; uniform holonomy ->
    # <cos(Polyakov loop)> = 0
    link = torch.cos(x[:, 0, 0, 0])
    assert _within(link.mean().item(), link.std().item(), n, 0.0)
    for polyakov in (torch.cos(x[:, 0, :, 0].sum(dim=1)), torch.cos(x[:, 1, 0, :].sum(dim=1))):
        assert _within(polyakov.mean().item(), polyakov.std().item(), n, 0.0)


def test_sampler_is_reproducible(device):
    def draw(seed):
        g = torch.Generator(device=device).manual_seed(seed)
        return sample_exact(1.5, 16, (4, 6), generator=g, dtype=torch.float64, device=device)

    a, b = draw(7), draw(7)
    if device.type == "cpu":
        assert torch.equal(a, b)
    else:
        assert torch.allclose(a, b)
    assert not torch.allclose(a, draw(8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 4)])
def test_sampler_shape_dtype_device(shape, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    x = sample_exact(2.0, 3, shape, generator=g, dtype=dtype, device=device)
    assert x.shape == (3, 2, *shape)
    assert x.dtype == dtype and x.device.type == device.type
    assert bool((x >= -PI).all() and (x < PI).all())
    assert sample_exact(2.0, 0, shape, generator=g, dtype=dtype, device=device).shape == (0, 2, *shape)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(n_configs=-1), "n_configs"),
        (dict(n_configs=2.0), "n_configs"),
        (dict(shape=(0, 3)), "shape"),
        (dict(shape=(3,)), "shape"),
        (dict(dtype=torch.int64), "dtype"),
    ],
)
def test_sampler_bad_input(kwargs, match):
    args = dict(beta=1.0, n_configs=2, shape=(2, 2)) | kwargs
    with pytest.raises(ValueError, match=match):
        sample_exact(args.pop("beta"), args.pop("n_configs"), args.pop("shape"), generator=torch.Generator(), **args)

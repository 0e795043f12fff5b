"""Exact finite-volume results of 2D U(1) Wilson gauge theory on a periodic ``L_0 x L_1`` lattice.

The action is ``S = beta * sum_P (1 - cos x_P)`` over the ``V = L_0 L_1`` plaquettes. In two dimensions
with periodic boundaries the wrapped plaquette angles ``theta_P`` in ``[-pi, pi)`` are independent
except for one constraint, ``sum_P theta_P = 0 (mod 2 pi)``. Writing that constraint as the Fourier sum
``sum_n e^{i n sum_P theta_P} / 2 pi`` factorises every expectation over plaquettes (the character
expansion of the Wilson action: Drouffe and Zuber, Phys. Rep. 102 (1983) 1; for 2D U(1) and its
topological charge, Wiese, Nucl. Phys. B 318 (1989) 153):

    Z = sum_{n in Z} c_n^V,   c_k = int_{-pi}^{pi} cos(k phi) e^{beta cos phi} dphi = 2 pi I_k(beta).

Everything here is computed from the ratios ``rho_n = c_n / c_0 = I_n(beta) / I_0(beta)``, which lie
in ``[0, 1]``, so ``rho_n^V`` can only underflow (harmlessly) and never overflow, for any ``V`` and
``beta``; the denominators ``sum_n rho_n^V >= 1``. The integrals are Gauss-Legendre sums of
``e^{beta (cos phi - 1)}`` times smooth factors on ``[-pi, pi]``: the integrands are entire, so the rule
converges exponentially, and it also handles the non-periodic factors ``phi`` and ``phi^2``. Only
numpy is used.

All functions take ``beta > 0`` and ``shape = (L_0, L_1)`` with positive integer extents and return
Python floats (or a dict of floats).
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np

__all__ = [
    "plaquette",
    "action_density",
    "topological_charge_squared",
    "topological_charge_distribution",
    "wilson_loop",
    "plaquette_infinite_volume",
    "susceptibility_infinite_volume",
]

# rho_n below this is dropped from every character sum: the largest neglected contribution is a few
# times this, far below double-precision round-off of the results.
_RHO_CUTOFF = 1e-18
# P(Q = q) below this is not reported by topological_charge_distribution.
_PROB_CUTOFF = 1e-15
# Allowed truncation error of the characteristic function of Q (relative to G(0) = 1).
_TAIL_TOLERANCE = 1e-16


# --------------------------------------------------------------------------------------------------
# argument checks


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise ValueError(f"beta must be a real number > 0, got {beta!r}")
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0.0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return beta


def _check_shape(shape) -> tuple[int, int]:
    ok = (
        isinstance(shape, (tuple, list))
        and len(shape) == 2
        and all(isinstance(L, numbers.Integral) and not isinstance(L, bool) and L >= 1 for L in shape)
    )
    if not ok:
        raise ValueError(f"shape must be a pair of positive integers (L_0, L_1), got {shape!r}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------------------------------
# character coefficients


def _n_max(beta: float) -> int:
    """Largest ``n`` kept in the character sums: beyond it every ``rho_n`` is below ``_RHO_CUTOFF``.

    Uses the bound ``I_{nu+1}(x) / I_nu(x) <= x / (nu + 1/2 + sqrt((nu + 1/2)^2 + x^2))`` for
    ``nu >= 0`` (Amos, Math. Comp. 28 (1974) 239), whose product over ``nu < n`` bounds ``rho_n``; it
    behaves like ``(beta/2)^n / n!`` at small beta and ``e^{-n^2 / 2 beta}`` at large beta.
    """
    log_cut, log_rho, n = math.log(_RHO_CUTOFF), 0.0, 0
    while log_rho > log_cut:
        nu = n + 0.5
        log_rho += math.log(beta / (nu + math.sqrt(nu * nu + beta * beta)))
        n += 1
    return n


@lru_cache(maxsize=16)
def _gauss_legendre(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on ``[-pi, pi]``, ``(n_nodes,)`` each (cached: leggauss is O(n^2))."""
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    return math.pi * x, math.pi * w


def _n_nodes(beta: float, n_max: int) -> int:
    """Gauss-Legendre nodes for ``cos(n phi) e^{beta cos phi}`` with ``n <= n_max``.

    A frequency ``omega`` on ``[-pi, pi]`` needs polynomials of degree about ``pi omega``, and the
    rule is exact to degree ``2 n_nodes - 1``: so about ``pi/2`` nodes per unit of the highest
    frequency, ``n_max`` plus the spread ``~ 8 sqrt(beta)`` of the Fourier modes of the peak, plus a
    margin; rounded up to a multiple of 32 so the node cache is shared by nearby betas. Doubling the
    count changes no result beyond round-off (checked from beta = 1e-3 to 2000).
    """
    n = 1.6 * (n_max + 8.0 * math.sqrt(beta)) + 64
    return 32 * math.ceil(n / 32)


@lru_cache(maxsize=64)
def _characters(beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Character ratios and moments for ``n = 0, ..., n_max``, each of shape ``(n_max + 1,)``.

    With ``g(phi) = e^{beta (cos phi - 1)}`` and ``c~_0 = int g``:

    - ``rho[n] = int cos(n phi) g / c~_0 = I_n(beta) / I_0(beta)``;
    - ``a[n]   = int (phi/2pi)^2 cos(n phi) g / c~_0``  (PHYSICS.md's ``a_n`` times ``rho_n``);
    - ``b[n]   = int (phi/2pi) sin(n phi) g / c~_0``    (PHYSICS.md's ``b_n`` times ``rho_n``).

    Normalising by ``c_0`` instead of ``c_n`` avoids dividing by the tiny ``c_n`` of large ``n``.
    ``rho`` and ``a`` are even in ``n``, ``b`` is odd.
    """
    n_max = _n_max(beta)
    phi, w = _gauss_legendre(_n_nodes(beta, n_max))
    g = w * np.exp(beta * (np.cos(phi) - 1.0))
    g = g / g.sum()
    n_phi = np.arange(n_max + 1)[:, None] * phi[None, :]
    q = phi / (2 * math.pi)
    rho = np.cos(n_phi) @ g
    a = np.cos(n_phi) @ (q * q * g)
    b = np.sin(n_phi) @ (q * g)
    for array in (rho, a, b):
        array.setflags(write=False)  # shared through the cache
    return rho, a, b


def _symmetric(even_half: np.ndarray, pad: int = 0) -> np.ndarray:
    """``f(n)`` for ``n = -N - pad, ..., N + pad`` from ``f(0..N)`` of an even ``f``, zero-padded.

    Index ``i`` holds ``n = i - N - pad``.
    """
    full = np.concatenate([even_half[:0:-1], even_half])
    return np.pad(full, pad)


# --------------------------------------------------------------------------------------------------
# finite volume


def plaquette(beta: float, shape: tuple[int, int]) -> float:
    """Exact ``<cos x_P>`` on the periodic lattice:

        <cos x_P> = sum_n I_n^{V-1} (I_{n-1} + I_{n+1}) / 2 / sum_n I_n^V,

    which tends to ``I_1(beta) / I_0(beta)`` as ``V -> infinity``.
    """
    beta = _check_beta(beta)
    L0, L1 = _check_shape(shape)
    V = L0 * L1
    rho = _symmetric(_characters(beta)[0], pad=1)
    mid = rho[1:-1]
    num = np.sum(mid ** (V - 1) * 0.5 * (rho[:-2] + rho[2:]))
    return float(num / np.sum(mid**V))


def action_density(beta: float, shape: tuple[int, int]) -> float:
    """Exact ``<S> / V = beta (1 - <cos x_P>)``."""
    return _check_beta(beta) * (1.0 - plaquette(beta, shape))


def wilson_loop(beta: float, shape: tuple[int, int], R: int, T: int) -> float:
    """Exact ``<Re W(R, T)>`` of the ``R x T`` rectangular loop (``R`` links along direction 0, ``T``
    along direction 1).

    In an abelian theory the loop equals the product of the ``A = R T`` plaquettes it encloses
    (oriented like the loop), so

        <W> = sum_n I_n^{V-A} I_{n+1}^A / sum_n I_n^V,

    real because ``n -> -1 - n`` maps the sum onto its complex conjugate; ``(I_1/I_0)^A`` in infinite
    volume. The formula also holds when the loop wraps the lattice: for ``R = L_0`` the two sides along
    direction 1 are the same links run both ways, and what is left is a pair of Polyakov loops
    ``P(n_1) P(n_1 + T)^*``, again the product of the ``L_0 T`` plaquettes of the strip between them;
    ``R = L_0, T = L_1`` gives exactly 1. Hence ``1 <= R <= L_0`` and ``1 <= T <= L_1``.
    """
    beta = _check_beta(beta)
    L0, L1 = _check_shape(shape)
    for name, extent, L in (("R", R, L0), ("T", T, L1)):
        if isinstance(extent, bool) or not isinstance(extent, numbers.Integral) or not 1 <= extent <= L:
            raise ValueError(f"{name} must be an integer in [1, {L}] for shape {(L0, L1)}, got {extent!r}")
    V, A = L0 * L1, int(R) * int(T)
    rho = _symmetric(_characters(beta)[0], pad=1)
    num = np.sum(rho[:-1] ** (V - A) * rho[1:] ** A)
    return float(num / np.sum(rho**V))


def topological_charge_squared(beta: float, shape: tuple[int, int]) -> float:
    """Exact ``<Q^2>`` with ``Q = (1/2pi) sum_P wrap(x_P)``:

        <Q^2> = V sum_n w_n [a_n - (V - 1) b_n^2],   w_n = I_n^V / sum_m I_m^V,

    with ``a_n, b_n`` as in PHYSICS.md: ``<(theta/2pi)^2>`` and ``<(theta/2pi) sin(n theta)>``-type
    moments of a single plaquette in the ``n``-th character sector. Computed as
    ``V [sum_n rho_n^{V-1} a~_n - (V-1) sum_n rho_n^{V-2} b~_n^2] / sum_n rho_n^V`` with the
    ``c_0``-normalised moments of ``_characters``.

    For ``V <= 2`` the charge vanishes identically (with two plaquettes ``theta_2 = wrap(-theta_1)``),
    and the character sum, which then converges only like ``1/n``, is not used.
    """
    beta = _check_beta(beta)
    L0, L1 = _check_shape(shape)
    V = L0 * L1
    if V <= 2:
        return 0.0
    rho, a, b = (_symmetric(f) for f in _characters(beta))  # b is odd, but enters squared
    num = np.sum(rho ** (V - 1) * a) - (V - 1) * np.sum(rho ** (V - 2) * b * b)
    # The two sums cancel down to about e^{-2 pi^2 beta / V} at large beta / V; round-off can leave
    # a value of order -1e-16 V chi there, which is clamped to the physical bound.
    return max(0.0, float(V * num / np.sum(rho**V)))


def topological_charge_distribution(beta: float, shape: tuple[int, int]) -> dict[int, float]:
    """Exact ``P(Q = q)`` for every ``q`` with ``P > 1e-15``, as ``{q: P}`` in increasing ``q``.

    Route (independent of ``topological_charge_squared``): the characteristic function of ``Q``,

        G(t) = <e^{2 pi i t Q}> = sum_n r(n + t)^V / sum_n r(n)^V,   r(k) = c(k) / c(0),

    follows from the same Fourier representation of the constraint, now with the real frequency
    ``n + t``. ``G`` is a 1-periodic trigonometric polynomial (``|Q| < V/2``), so a DFT of ``G`` on
    ``M`` equispaced ``t`` gives ``P(q)`` exactly up to aliasing ``P(q + jM)``; ``M`` (a power of two,
    at least 64 or ``V + 1``) is doubled until nothing reportable lies beyond ``|q| = M/4``, or until
    ``M > V``, where aliasing is impossible. See ``_r_power`` for how ``r(k)^V`` is evaluated.

    For ``V <= 4``, ``|Q| <= 1``, so ``P(+-1) = <Q^2>/2`` and that is what is returned (for
    ``V <= 2``, ``Q = 0``): there the slow ``1/k`` tail of ``r(k)`` would need millions of terms.
    Entries below the DFT's round-off (estimated from its imaginary part, zero in exact arithmetic)
    are dropped as well; in double precision that level is far below 1e-15 up to ``V = 256^2``.
    """
    beta = _check_beta(beta)
    L0, L1 = _check_shape(shape)
    V = L0 * L1
    if V <= 4:
        p1 = 0.5 * topological_charge_squared(beta, shape)
        probs = {-1: p1, 0: 1.0 - 2.0 * p1, 1: p1}
        return {q: p for q, p in probs.items() if p > _PROB_CUTOFF}

    n_cut = _n_cut_for_tail(beta, V)
    M = min(64, _next_power_of_two(V + 1))
    while True:
        # all k = n + j/M, n in [-n_cut, n_cut], j in [0, M), as one grid of step 1/M
        k = np.arange(-n_cut * M, (n_cut + 1) * M) / M
        G = np.sum(_r_power(beta, k, V).reshape(2 * n_cut + 1, M), axis=0)  # G(j/M) unnormalised
        G = G / G[0]  # the t = 0 column is the partition function sum_n rho_n^V
        P_complex = np.fft.fft(G) / M  # P[q mod M]
        q = np.fft.fftfreq(M, d=1.0 / M).astype(int)
        P = np.real(P_complex)
        P = 0.5 * (P + P[(-q) % M])  # G is real and even; this only removes round-off asymmetry
        cutoff = max(_PROB_CUTOFF, 10.0 * float(np.max(np.abs(np.imag(P_complex)))))
        if M > V or np.all(P[np.abs(q) >= M // 4] < cutoff):
            break
        M *= 2
    return {int(qi): float(pi) for qi, pi in sorted(zip(q, P)) if pi > cutoff}


def _r_power(beta: float, k: np.ndarray, V: int) -> np.ndarray:
    """``r(k)^V`` for real frequencies ``k`` of shape ``(K,)``; returns ``(K,)``.

    Near ``k = 0``, ``r`` is close to 1 and an absolute error ``eps`` in ``r`` would become a relative
    error ``V eps`` in ``r^V`` (1e-11 at ``V = 256^2``). So ``s = 1 - r`` is computed to relative
    precision, ``s(k) = int 2 sin^2(k phi / 2) g / int g``, a Gauss-Legendre sum of non-negative
    terms, and ``r^V = exp(V log1p(-s))``. That rule resolves frequencies up to ``n_max``; beyond,
    ``r`` is small and comes from the Whittaker-Shannon series ``r(k) = sum_m rho_m sinc(k - m)``,
    exact because ``c(k)`` is the Fourier transform of a function supported on ``[-pi, pi]``.
    """
    rho_half = _characters(beta)[0]
    n_max = len(rho_half) - 1
    s = np.empty_like(k)
    inner = np.abs(k) <= n_max
    phi, w = _gauss_legendre(_n_nodes(beta, n_max))
    g = w * np.exp(beta * (np.cos(phi) - 1.0))
    g = g / g.sum()
    k_inner = k[inner]
    s_inner = np.empty_like(k_inner)
    block = max(1, 2**22 // len(phi))  # bounds the (block, nodes) temporary to 32 MiB
    for i in range(0, len(k_inner), block):
        kb = k_inner[i : i + block]
        s_inner[i : i + block] = (2.0 * np.sin(0.5 * kb[:, None] * phi[None, :]) ** 2) @ g
    s[inner] = s_inner
    k_outer = k[~inner]
    r_outer = np.zeros_like(k_outer)
    for m_i, rho_i in zip(range(-n_max, n_max + 1), _symmetric(rho_half)):
        r_outer += rho_i * np.sinc(k_outer - m_i)
    s[~inner] = 1.0 - r_outer
    near_one = s < 0.5
    return np.where(near_one, np.exp(V * np.log1p(-np.minimum(s, 0.5))), (1.0 - s) ** V)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _n_cut_for_tail(beta: float, V: int) -> int:
    """Smallest ``N`` such that ``sum_{|n| > N} |r(n + t)|^V < 1e-16`` for every ``|t| <= 1/2``.

    For ``|k| >= 2 n_max``, pairing ``m`` with ``-m`` in ``r(k) = (sin pi k / pi) sum_m (-1)^m rho_m /
    (k - m)`` gives ``|r(k)| <= B(|k|) = (A / |k| + D / |k|^3) / pi`` with
    ``A = sum_m (-1)^m rho_m = e^{-beta} / I_0(beta)`` and ``D = (4/3) sum_m m^2 rho_m``. ``B``
    falls at least like ``1/k``, so the tail is at most ``2 B(x)^V x / (V - 1)``, ``x = N + 1/2``.
    """
    rho_half = _characters(beta)[0]
    n_max = len(rho_half) - 1
    n = np.arange(n_max + 1)
    weight = np.where(n == 0, 1.0, 2.0)  # the sums over m in Z, from m >= 0
    A = abs(float(np.sum(weight * (-1.0) ** n * rho_half)))
    D = 4.0 / 3.0 * float(np.sum(weight * n * n * rho_half))

    def log_tail(N: int) -> float:
        x = N + 0.5
        return V * math.log((A / x + D / x**3) / math.pi) + math.log(2 * x / (V - 1))

    N = 2 * n_max + 1
    while log_tail(N) > math.log(_TAIL_TOLERANCE):
        N = int(N * 1.25) + 1
    return N


# --------------------------------------------------------------------------------------------------
# infinite volume


def plaquette_infinite_volume(beta: float) -> float:
    """``<cos x_P>`` at infinite volume, ``I_1(beta) / I_0(beta)``."""
    return float(_characters(_check_beta(beta))[0][1])


def susceptibility_infinite_volume(beta: float) -> float:
    """Topological susceptibility ``chi = <Q^2> / V`` at infinite volume:

        chi = int (phi/2pi)^2 e^{beta cos phi} dphi / int e^{beta cos phi} dphi,

    the variance of one plaquette's charge; about ``1 / (4 pi^2 beta)`` at large beta.
    """
    return float(_characters(_check_beta(beta))[1][0])

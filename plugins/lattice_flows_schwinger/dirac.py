"""The Wilson-Dirac operator of 2D U(1) gauge fields (r = 1), two-component spinors.

Conventions (``../shared/PHYSICS.md`` and ``docs/schwinger.md``):

    (D psi)(n) = (m + 2) psi(n)
                 - 1/2 sum_mu [ (1 - g_mu) U_mu(n) psi(n + e_mu) + (1 + g_mu) conj(U_mu(n - e_mu)) psi(n - e_mu) ]

with ``g_0 = sigma_1``, ``g_1 = sigma_2``, ``gamma_5 = sigma_3``; antiperiodic in direction 0 (a hop across
that boundary gets a factor -1), periodic in direction 1. ``gamma_5 D gamma_5 = D^dag``.

Shapes: link angles ``x`` are real ``(B, 2, L_0, L_1)`` (``U_mu(n) = exp(i x[:, mu, n_0, n_1])``); spinor
fields ``psi`` are complex ``(B, 2, L_0, L_1)`` (spin index second), of the complex dtype of ``x``
(``float64 -> complex128``, ``float32 -> complex64``). Everything is torch arithmetic on the inputs' device.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "complex_dtype", "fermion_links", "apply_dirac", "apply_dirac_dagger", "apply_normal", "gamma5",
    "dense_dirac", "log_det_normal", "dirac_link_derivative", "free_spectrum", "spinor_shape",
]


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of spinors on real fields of ``dtype`` (``float32 -> complex64``, ``float64 -> complex128``)."""
    if dtype == torch.float64:
        return torch.complex128
    if dtype == torch.float32:
        return torch.complex64
    if dtype in (torch.complex64, torch.complex128):
        return dtype
    raise TypeError(f"expected float32 or float64 link angles, got {dtype}")


def spinor_shape(x: Tensor) -> tuple[int, ...]:
    """The shape of a spinor field on the links ``x`` ``(B, 2, L_0, L_1)``: the same, ``(B, 2, L_0, L_1)``."""
    return tuple(x.shape)


def fermion_links(x: Tensor) -> Tensor:
    """``U_mu(n) = exp(i x_mu(n))`` with the antiperiodic sign in direction 0 folded in: complex ``(B, 2, L_0, L_1)``.

    The links ``U_0(n)`` with ``n_0 = L_0 - 1`` (those whose hop crosses the boundary of direction 0) get -1;
    the forward hop across it uses ``U_0``, the backward one ``conj(U_0)``, so both get the factor -1.
    """
    u = torch.polar(torch.ones_like(x), x)
    sign = torch.ones(x.shape[2], dtype=x.dtype, device=x.device)
    sign[-1] = -1.0
    u0 = u[:, 0] * sign.view(-1, 1)
    return torch.stack([u0, u[:, 1]], dim=1)


def _project(mu: int, sign: int, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(1 + sign * g_mu) (a, b)`` for the spin components ``a``, ``b`` of a spinor."""
    if mu == 0:  # g_0 = sigma_1 = [[0, 1], [1, 0]]
        h = a + sign * b
        return h, sign * h
    # g_1 = sigma_2 = [[0, -i], [i, 0]]: (1 - g_1)(a, b) = (a + i b, -i (a + i b)); (1 + g_1)(a, b) = (a - i b, i (a - i b))
    h = a - sign * 1j * b
    return h, sign * 1j * h


def _wilson(u: Tensor, psi: Tensor, mass: float, dagger: bool) -> Tensor:
    """``D psi`` (or ``D^dag psi = gamma_5 D gamma_5 psi``) from the links ``u`` of :func:`fermion_links`.

    Each hop's spin projector has rank one, ``(1 -+ g_mu) = v w^dag``, so a hop moves one complex number per
    site: with ``(a, b)`` the spin components,

        mu = 0:  (1 - g_0) (a, b) = (a - b) (1, -1),    (1 + g_0) (a, b) = (a + b) (1, 1)
        mu = 1:  (1 - g_1) (a, b) = (a + i b) (1, -i),  (1 + g_1) (a, b) = (a - i b) (1, i)
    """
    a, b = psi[:, 0], psi[:, 1]
    if dagger:  # gamma_5 on the way in
        b = -b
    u0, u1 = u[:, 0], u[:, 1]
    f0 = u0 * torch.roll(a - b, -1, dims=1)  # U_0(n) h(n + e_0), h = a - b
    b0 = torch.roll(u0.conj() * (a + b), 1, dims=1)  # conj(U_0(n - e_0)) h(n - e_0), h = a + b
    f1 = u1 * torch.roll(a + 1j * b, -1, dims=2)
    b1 = torch.roll(u1.conj() * (a - 1j * b), 1, dims=2)
    diagonal = mass + 2.0
    top = diagonal * a - 0.5 * (f0 + b0 + f1 + b1)
    bottom = diagonal * b - 0.5 * (b0 - f0 + 1j * (b1 - f1))
    if dagger:  # and gamma_5 on the way out
        bottom = -bottom
    return torch.stack([top, bottom], dim=1)


def apply_dirac(x: Tensor, psi: Tensor, mass: float, *, links: Tensor | None = None) -> Tensor:
    """``D psi``: links ``x`` real ``(B, 2, L_0, L_1)``, ``psi`` complex ``(B, 2, L_0, L_1)`` -> complex, same shape.

    ``links``: :func:`fermion_links` of ``x``, when the caller has them already (a solver applies ``D`` many
    times on the same links).
    """
    return _wilson(fermion_links(x) if links is None else links, psi, mass, dagger=False)


def gamma5(psi: Tensor) -> Tensor:
    """``gamma_5 psi = sigma_3 psi``: the lower spin component changes sign."""
    return torch.stack([psi[:, 0], -psi[:, 1]], dim=1)


def apply_dirac_dagger(x: Tensor, psi: Tensor, mass: float, *, links: Tensor | None = None) -> Tensor:
    """``D^dag psi = gamma_5 D gamma_5 psi`` (the Wilson operator is gamma_5-hermitian)."""
    return _wilson(fermion_links(x) if links is None else links, psi, mass, dagger=True)


def apply_normal(x: Tensor, psi: Tensor, mass: float, *, links: Tensor | None = None) -> Tensor:
    """``D^dag D psi``, the hermitian positive operator that the conjugate-gradient solver inverts."""
    u = fermion_links(x) if links is None else links
    return _wilson(u, _wilson(u, psi, mass, dagger=False), mass, dagger=True)


#: Configurations whose dense matrices :func:`dense_dirac` assembles per call of :func:`apply_dirac`.
DENSE_CHUNK = 16


def dense_dirac(x: Tensor, mass: float) -> Tensor:
    """``D`` as a dense complex matrix per configuration, ``(B, N, N)`` with ``N = 2 V``.

    Rows and columns index the flattened spinor ``(spin, n_0, n_1)`` (``psi.reshape(B, N)``). Built by applying
    :func:`apply_dirac` to the unit vectors, :data:`DENSE_CHUNK` configurations per call, so it is
    differentiable in ``x`` and is the very operator the solver inverts. Memory ``B N^2`` complex numbers:
    small lattices only (16x16: 4 MiB per configuration).
    """
    b, shape = x.shape[0], tuple(x.shape[1:])
    n = math.prod(shape)
    eye = torch.eye(n, dtype=complex_dtype(x.dtype), device=x.device).reshape(n, *shape)
    out = [torch.empty(0, n, n, dtype=eye.dtype, device=x.device)]
    for start in range(0, b, DENSE_CHUNK):
        xi = x[start : start + DENSE_CHUNK]
        k = xi.shape[0]
        columns = apply_dirac(xi.repeat_interleave(n, dim=0), eye.repeat(k, 1, 1, 1), mass)  # column j is D e_j
        out.append(columns.reshape(k, n, n).transpose(1, 2))
    return torch.cat(out)


def log_det_normal(x: Tensor, mass: float) -> Tensor:
    """``log det(D^dag D) = 2 log |det D|`` per configuration, real ``(B,)``, from a dense LU (differentiable)."""
    return 2.0 * torch.linalg.slogdet(dense_dirac(x, mass)).logabsdet


def dirac_link_derivative(x: Tensor, left: Tensor, right: Tensor, *, links: Tensor | None = None) -> Tensor:
    """``d/dx_mu(n) [left^dag D right]`` for every link, complex ``(B, 2, L_0, L_1)``.

    Only the two hopping terms through ``U_mu(n)`` depend on ``x_mu(n)``, with ``dU/dx = i U``:

        -1/2 [ left(n)^dag (1 - g_mu) i U_mu(n) right(n + e_mu) - left(n + e_mu)^dag (1 + g_mu) i conj(U_mu(n)) right(n) ]

    The pseudofermion force is ``dS_F/dx = -2 Re`` of this with ``left = D X``, ``right = X``.
    """
    u = fermion_links(x) if links is None else links
    out = []
    for mu in range(2):
        dim = 2 + mu
        r_up = torch.roll(right, -1, dims=dim)  # right(n + e_mu)
        l_up = torch.roll(left, -1, dims=dim)  # left(n + e_mu)
        f0, f1 = _project(mu, -1, r_up[:, 0], r_up[:, 1])
        b0, b1 = _project(mu, +1, right[:, 0], right[:, 1])
        forward = (left[:, 0].conj() * f0 + left[:, 1].conj() * f1) * u[:, mu]
        backward = (l_up[:, 0].conj() * b0 + l_up[:, 1].conj() * b1) * u[:, mu].conj()
        out.append(-0.5j * (forward - backward))
    return torch.stack(out, dim=1)


def free_spectrum(lattice_shape: Sequence[int], mass: float) -> Tensor:
    """Eigenvalues of the free operator (all links 1), complex128 ``(2 V,)``, sorted by real then imaginary part:
    ``m + sum_mu (1 - cos p_mu) +- i sqrt(sum_mu sin^2 p_mu)``, ``p_0 = (2k + 1) pi / L_0`` (antiperiodic),
    ``p_1 = 2 pi k / L_1``."""
    l0, l1 = lattice_shape
    p0 = (2 * torch.arange(l0, dtype=torch.float64) + 1) * math.pi / l0
    p1 = 2 * torch.arange(l1, dtype=torch.float64) * math.pi / l1
    p0, p1 = torch.meshgrid(p0, p1, indexing="ij")
    re = mass + (1 - torch.cos(p0)) + (1 - torch.cos(p1))
    im = torch.sqrt(torch.sin(p0) ** 2 + torch.sin(p1) ** 2)
    ev = torch.cat([torch.complex(re, im).flatten(), torch.complex(re, -im).flatten()])
    return sort_complex(ev)


def sort_complex(values: Tensor) -> Tensor:
    """``values`` sorted by rounded real part, then imaginary part (for comparing spectra)."""
    keys = sorted(range(values.numel()), key=lambda i: (round(values[i].real.item(), 9), round(values[i].imag.item(), 9)))
    return values[torch.tensor(keys)]

"""Fermion observables of the two-flavour Schwinger model: the chiral condensate and the pion correlator.

Both measure link angles ``(B, 2, L_0, L_1)`` (``theory = "u1"``) and apply only to the Schwinger actions
(:meth:`~lattice_flows.Observable.applies_to`: they need the action's fermion ``mass``); both are gauge
invariant. Conventions are those of :mod:`.dirac` (Wilson-Dirac ``D``, r = 1, antiperiodic in direction 0):

- ``chiral_condensate``: ``Sigma = (1/V) Re tr D^{-1}`` (one flavour), exactly from the dense inverse, or by
  ``n_sources`` noise vectors ``xi`` (``E[xi xi^dag] = 1``): ``(1/V) Re xi^dag D^{-1} xi``, averaged. The
  stochastic estimate draws from the run's measurement generator (never the sampler's).
- ``pion_correlator``: ``C(t) = sum_{n_1} sum_{spins} |D^{-1}((t, n_1), (0, 0))|^2``, one column per ``t``,
  from the two solves of a point source at the origin (one per source spin); the columns of one
  configuration share those solves. The summary adds the effective mass
  ``m_eff(t) = arccosh((C(t-1) + C(t+1)) / (2 C(t)))`` with blocked-jackknife errors
  (:meth:`PionCorrelator.summary_rows`).

Every solve is ``D^{-1} b = (D^dag D)^{-1} D^dag b`` by conjugate gradient on ``D^dag D`` (:mod:`.cg`), to the
action's tolerance for the dtype where it has one (``schwinger``'s ``cg_tol``, ``cg_max_iter``), else to
:func:`~.action.default_cg_tol` within :data:`DEFAULT_MAX_ITER` iterations.

:func:`free_condensate` and :func:`free_pion_correlator` are the free-field (all links 0) values from the
momentum-space propagator, for checks.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

import attrs
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lattice_flows import Action, Observable, analysis
from lattice_flows.errors import ParameterError
from lattice_flows.params import choice, injected, integer
from lattice_flows.run_table import CHAIN, TRAJECTORY

from .action import SchwingerAction, default_cg_tol
from .cg import conjugate_gradient
from .dirac import apply_dirac_dagger, apply_normal, complex_dtype, dense_dirac, fermion_links

__all__ = [
    "ChiralCondensate", "PionCorrelator", "solve_dirac", "free_propagator", "free_condensate",
    "free_pion_correlator", "effective_mass_rows", "EXACT_MAX_SITES", "AUTO_EXACT_MAX_SITES", "DEFAULT_MAX_ITER",
    "MAX_SOURCES", "SOURCE_CHUNK",
]

#: Largest lattice (sites) the exact condensate accepts: 32 x 32, a dense 2048 x 2048 inverse per configuration.
EXACT_MAX_SITES = 1024
#: Largest lattice (sites) on which ``method = "auto"`` takes the exact condensate (16 x 16); stochastic above.
AUTO_EXACT_MAX_SITES = 256
#: The iteration cap of a solve when the action has no ``cg_max_iter`` (``schwinger_det``).
DEFAULT_MAX_ITER = 5000
#: Most noise vectors of the stochastic condensate per configuration, and how many are solved at once (memory).
MAX_SOURCES = 1 << 20
SOURCE_CHUNK = 64


def _is_schwinger(action: Any) -> bool:
    if isinstance(action, type):
        return issubclass(action, SchwingerAction)
    return isinstance(action, SchwingerAction)


def _solver_settings(action: SchwingerAction, dtype: torch.dtype) -> tuple[float, int]:
    """The CG tolerance and iteration cap of the action for ``dtype`` (its own where it has them)."""
    tolerance = getattr(action, "tolerance", None)
    tol = tolerance(dtype) if callable(tolerance) else default_cg_tol(dtype)
    return tol, int(getattr(action, "cg_max_iter", DEFAULT_MAX_ITER))


def solve_dirac(x: Tensor, b: Tensor, action: SchwingerAction, *, what: str) -> Tensor:
    """``D^{-1} b = (D^dag D)^{-1} D^dag b`` on the links ``x`` ``(B, 2, L_0, L_1)`` for spinors ``b`` of the same
    shape, by CG on ``D^dag D`` to the action's tolerance (:class:`~.cg.CGNotConverged` if a chain fails)."""
    links = fermion_links(x)
    tol, max_iter = _solver_settings(action, x.dtype)
    rhs = apply_dirac_dagger(x, b, action.mass, links=links)
    result = conjugate_gradient(
        lambda v: apply_normal(x, v, action.mass, links=links), rhs, tol=tol, max_iter=max_iter, what=what
    )
    return result.x


class _SchwingerObservable(Observable):
    theory: ClassVar[str] = "u1"

    @classmethod
    def applies_to(cls, action) -> bool:
        """Only the Schwinger-model actions (``schwinger``, ``schwinger_det``): the fermions need their ``mass``."""
        return _is_schwinger(action)

    @classmethod
    def requirement(cls) -> str:
        return "a Schwinger-model action with fermions (schwinger or schwinger_det: their mass)"


@attrs.frozen(kw_only=True)
class ChiralCondensate(_SchwingerObservable):
    """Chiral condensate of one flavour, ``Sigma = (1/V) Re tr D^{-1}``, per configuration ``(B,)``.

    ``method``: ``exact`` (dense inverse, ``O(V^3)``; lattices up to 32 x 32), ``stochastic`` (``n_sources``
    noise vectors, two CG solves' worth each; any size; draws from the measurement generator), or ``auto``
    (exact up to 16 x 16, stochastic above). The stochastic estimate is unbiased; its noise adds to the
    Monte Carlo error, which the summary's error includes.
    """

    example_params: ClassVar[dict] = {"method": "exact"}

    method: str = choice(
        ("auto", "exact", "stochastic"),
        help="'exact': the dense inverse (lattices up to 32 x 32); 'stochastic': n_sources noise vectors and CG "
        "solves; 'auto': exact up to 16 x 16 sites, stochastic above",
        default="auto",
    )
    n_sources: int = integer(
        help="noise vectors per configuration of the stochastic estimate (solved 64 at a time)",
        default=8, ge=1, le=MAX_SOURCES,
    )
    noise: str = choice(
        ("z2", "gaussian"),
        help="noise of the stochastic estimate: 'z2' (entries +-1) or 'gaussian' (complex normal, <|xi|^2> = 1)",
        default="z2",
    )
    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __attrs_post_init__(self):
        sites = math.prod(self.lattice_shape)
        if self.method == "exact" and sites > EXACT_MAX_SITES:
            raise ParameterError(
                "method",
                f"'exact' needs the dense {2 * sites} x {2 * sites} Dirac matrix on {list(self.lattice_shape)}; expected "
                f"at most {EXACT_MAX_SITES} sites (32 x 32): use method 'stochastic' (or 'auto')",
            )

    @property
    def resolved_method(self) -> str:
        """``exact`` or ``stochastic``: what ``auto`` means on this lattice."""
        if self.method != "auto":
            return self.method
        return "exact" if math.prod(self.lattice_shape) <= AUTO_EXACT_MAX_SITES else "stochastic"

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """Stochastic where the method is (a property: ``method`` decides)."""
        return self.resolved_method == "stochastic"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        volume = math.prod(x.shape[2:])
        if self.resolved_method == "exact":
            inverse = torch.linalg.inv(dense_dirac(x, self.action.mass))
            return torch.diagonal(inverse, dim1=-2, dim2=-1).sum(-1).real.to(x.dtype) / volume
        if generator is None:
            raise TypeError("chiral_condensate (stochastic): expected obs(x, generator), the measurement generator")
        b, cdtype = x.shape[0], complex_dtype(x.dtype)
        total = torch.zeros(b, dtype=x.dtype, device=x.device)
        for start in range(0, self.n_sources, SOURCE_CHUNK):
            n = min(SOURCE_CHUNK, self.n_sources - start)
            shape = (b * n, *x.shape[1:])  # configuration i's sources are rows i n .. i n + n - 1
            if self.noise == "z2":
                xi = (2 * torch.randint(0, 2, shape, generator=generator, device=x.device) - 1).to(cdtype)
            else:
                xi = torch.randn(shape, generator=generator, dtype=cdtype, device=x.device)
            solution = solve_dirac(x.repeat_interleave(n, dim=0), xi, self.action, what="the chiral condensate")
            total += (xi.conj() * solution).real.flatten(1).sum(1).view(b, n).sum(1).to(x.dtype)
        return total / (volume * self.n_sources)


class _PointSourceCache:
    """The last configurations' full correlator ``(B, L_0)``: the ``L_0`` columns of one batch share two solves."""

    def __init__(self):
        self.key: tuple | None = None
        self.x: Tensor | None = None
        self.value: Tensor | None = None

    def get(self, x: Tensor, key: tuple) -> Tensor | None:
        if self.key == key and self.x is not None and self.x.shape == x.shape and self.x.device == x.device and torch.equal(self.x, x):
            return self.value
        return None

    def put(self, x: Tensor, key: tuple, value: Tensor) -> None:
        self.key, self.x, self.value = key, x.detach().clone(), value


_CACHE = _PointSourceCache()


def pion_correlator_all(x: Tensor, action: SchwingerAction) -> Tensor:
    """``C(t)`` for every ``t = 0 .. L_0 - 1``, ``(B, L_0)``: ``sum_{n_1, spins} |D^{-1}((t, n_1), (0, 0))|^2``,
    from two solves per configuration (a point source at the origin in each spin)."""
    key = (float(action.mass), _solver_settings(action, x.dtype))
    cached = _CACHE.get(x, key)
    if cached is not None:
        return cached
    b = x.shape[0]
    source = torch.zeros((2 * b, *x.shape[1:]), dtype=complex_dtype(x.dtype), device=x.device)
    source[0::2, 0, 0, 0] = 1.0  # source spin 0 of configuration i at row 2 i
    source[1::2, 1, 0, 0] = 1.0  # source spin 1 at row 2 i + 1
    solution = solve_dirac(x.repeat_interleave(2, dim=0), source, action, what="the pion correlator")
    density = solution.abs().square().view(b, 2, 2, *x.shape[2:])  # (B, source spin, sink spin, L_0, L_1)
    value = density.sum(dim=(1, 2, 4)).to(x.dtype)
    _CACHE.put(x, key, value)
    return value


@attrs.frozen(kw_only=True)
class PionCorrelator(_SchwingerObservable):
    """Pion correlator ``C(t) = sum_{n_1} sum_{spins} |D^{-1}((t, n_1), (0, 0))|^2`` per configuration ``(B,)``.

    ``t`` is the separation along direction 0 from a point source at the origin (two CG solves per
    configuration, shared by the columns of every ``t``). Gauge invariant; ``C(t) = C(L_0 - t)`` in the
    mean, ``C(t) ~ cosh(m_pi (t - L_0/2))`` at large ``t``. List one entry per ``t``
    (``[{"name": "pion_correlator", "t": t} for t in range(L_0)]``); the summary then adds the effective mass
    ``pion_effective_mass(t=...)`` for every ``t`` whose neighbours are measured too.
    """

    example_params: ClassVar[dict] = {"t": 1}

    t: int = integer(help="separation of sink and source time slices along direction 0 (0 <= t < L_0)", ge=0)
    action: Action = injected("action")
    lattice_shape: tuple = injected("lattice_shape")

    def __attrs_post_init__(self):
        if self.t >= self.lattice_shape[0]:
            raise ParameterError("t", f"expected t < L_0 = {self.lattice_shape[0]}, got {self.t}")

    def __call__(self, x: Tensor) -> Tensor:
        return pion_correlator_all(x, self.action)[:, self.t]

    @classmethod
    def summary_rows(cls, table: pd.DataFrame, columns: Mapping[str, Observable]) -> pd.DataFrame | None:
        """``pion_effective_mass(t=...)``: :func:`effective_mass_rows` of the correlator's columns."""
        by_t: dict[int, str] = {}
        length = None
        for column, obs in columns.items():
            by_t.setdefault(obs.t, column)
            length = obs.lattice_shape[0]
        if length is None:
            return None
        return effective_mass_rows(table, by_t, length, prefix="pion_effective_mass")


#: Fewest blocks of the jackknife of the effective mass (as the summary's binning cross-check).
JACKKNIFE_BLOCKS = 32
#: An effective mass whose error exceeds this fraction of its value is reported unreliable.
MAX_RELATIVE_ERROR = 0.5


def _cosh_mass(prev: np.ndarray, here: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (prev + nxt) / (2.0 * here)
        return np.where((here > 0) & (ratio >= 1.0), np.arccosh(np.where(ratio >= 1.0, ratio, 1.0)), np.nan)


def effective_mass_rows(
    table: pd.DataFrame, by_t: Mapping[int, str], length: int, *, prefix: str, min_blocks: int = JACKKNIFE_BLOCKS
) -> pd.DataFrame | None:
    """The cosh effective mass ``m_eff(t) = arccosh((C(t-1) + C(t+1)) / (2 C(t)))`` of a periodic correlator whose
    columns ``by_t`` (``{t: column}``) the table holds, for ``1 <= t <= length // 2`` with ``t - 1``, ``t`` and
    ``t + 1`` (mod ``length``) measured; rows ``<prefix>(t=...)``, ``None`` if there are none.

    The mean is ``m_eff`` of the means; the error is the jackknife over blocks (each chain cut into
    ``ceil(min_blocks / n_chains)`` consecutive blocks, as :func:`lattice_flows.analysis.binned_error` does). A row
    is unreliable, with a note, where ``C(t) <= 0`` or the ratio is below 1 (no cosh mass: noise or an excited
    state), where a jackknife sample has none, where the error exceeds :data:`MAX_RELATIVE_ERROR` of the value
    (noise: the correlator is drowned), or where the blocks are shorter than ``2 tau_int`` of a column used
    (the error is then underestimated: run longer). ``tau_int`` is the largest Gamma-method ``tau_int`` of the
    three columns used."""
    ts = [t for t in range(1, length // 2 + 1) if all(((t + d) % length) in by_t for d in (-1, 0, 1))]
    if not ts:
        return None
    ordered = table.sort_values([CHAIN, TRAJECTORY], kind="stable")
    n_chains = int(ordered[CHAIN].nunique())
    n_per_chain = len(ordered) // n_chains
    per_chain = max(1, -(-min_blocks // n_chains))
    size = n_per_chain // per_chain
    needed = sorted({(t + d) % length for t in ts for d in (-1, 0, 1)})
    series = {s: ordered[by_t[s]].to_numpy(dtype=float).reshape(n_chains, n_per_chain) for s in needed}
    rows = {}
    if size < 1 or n_chains * per_chain < 2:
        for t in ts:
            rows[f"{prefix}(t={t})"] = {"mean": math.nan, "error": math.nan, "n_samples": n_chains * n_per_chain,
                                        "reliable": False, "note": "too few measurements for a jackknife"}
        return pd.DataFrame.from_dict(rows, orient="index")
    blocks = {s: v[:, n_per_chain - per_chain * size:].reshape(n_chains * per_chain, size).mean(1) for s, v in series.items()}
    n_blocks = n_chains * per_chain
    tau = {}
    for s, v in series.items():
        res = analysis.gamma_method(v)
        tau[s] = (res.tau_int, res.tau_int_error) if math.isfinite(res.tau_int) else (0.5, math.nan)
    for t in ts:
        p, c, n = ((t + d) % length for d in (-1, 0, 1))
        full = {s: blocks[s].sum() for s in (p, c, n)}
        jack = {s: (full[s] - blocks[s]) / (n_blocks - 1) for s in (p, c, n)}
        means = {s: full[s] / n_blocks for s in (p, c, n)}
        value = float(_cosh_mass(np.array(means[p]), np.array(means[c]), np.array(means[n])))
        samples = _cosh_mass(jack[p], jack[c], jack[n])
        error = math.sqrt((n_blocks - 1) / n_blocks * float(np.sum((samples - samples.mean()) ** 2)))
        notes = []
        if not means[c] > 0:
            notes.append(f"C({c}) = {means[c]:.3g} is not positive: no effective mass")
        elif not math.isfinite(value):
            ratio = (means[p] + means[n]) / (2 * means[c])
            notes.append(f"(C({p}) + C({n})) / (2 C({c})) = {ratio:.4g} < 1: no cosh effective mass (noise)")
        elif not math.isfinite(error):
            bad = int(np.isnan(samples).sum())
            notes.append(f"{bad} of {n_blocks} jackknife samples have no effective mass: too noisy, no error")
        elif error > MAX_RELATIVE_ERROR * abs(value):
            notes.append(f"errors too large: the error is {error / abs(value):.0%} of the value (noise dominates)")
        slow, slow_error = max(tau[s] for s in (p, c, n))
        if not notes and size < 2 * slow:
            notes.append(f"blocks of {size} updates are shorter than 2 tau_int = {2 * slow:.1f}: the error is too small; run longer")
        rows[f"{prefix}(t={t})"] = {
            "mean": value, "error": error, "tau_int": slow, "tau_int_error": slow_error, "n_samples": n_chains * n_per_chain,
            "reliable": not notes, "note": "; ".join(notes) or f"jackknife over {n_blocks} blocks of {size}",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


# -- the free field, from the momentum-space propagator ----------------------------------------------


def _momenta(lattice_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    l0, l1 = lattice_shape
    p0 = (2 * torch.arange(l0, dtype=torch.float64) + 1) * math.pi / l0  # antiperiodic
    p1 = 2 * torch.arange(l1, dtype=torch.float64) * math.pi / l1
    return torch.meshgrid(p0, p1, indexing="ij")


def free_propagator(lattice_shape: Sequence[int], mass: float) -> Tensor:
    """The free (all links 0) ``D^{-1}(n, 0)``, complex128 ``(2, 2, L_0, L_1)`` (sink spin, source spin, ``n``):
    ``(1/V) sum_p e^{i p n} D(p)^{-1}`` with ``D(p) = (m + sum_mu (1 - cos p_mu)) + i sum_mu g_mu sin p_mu``."""
    p0, p1 = _momenta(lattice_shape)
    a = mass + (1 - torch.cos(p0)) + (1 - torch.cos(p1))
    s0, s1 = torch.sin(p0), torch.sin(p1)
    denominator = a**2 + s0**2 + s1**2
    # D(p)^{-1} = (a - i (g_0 s_0 + g_1 s_1)) / (a^2 + s^2), g_0 = sigma_1, g_1 = sigma_2
    inv = torch.zeros((2, 2, *a.shape), dtype=torch.complex128)
    inv[0, 0] = a / denominator
    inv[1, 1] = a / denominator
    inv[0, 1] = (-1j * s0 - s1) / denominator  # -i (s_0 * 1 + s_1 * (-i))
    inv[1, 0] = (-1j * s0 + s1) / denominator  # -i (s_0 * 1 + s_1 * (+i))
    n0 = torch.arange(lattice_shape[0], dtype=torch.float64)
    n1 = torch.arange(lattice_shape[1], dtype=torch.float64)
    phase0 = torch.exp(1j * torch.outer(n0, p0[:, 0]))  # (n_0, p_0)
    phase1 = torch.exp(1j * torch.outer(n1, p1[0, :]))  # (n_1, p_1)
    volume = math.prod(lattice_shape)
    return torch.einsum("ap,bq,ijpq->ijab", phase0, phase1, inv) / volume


def free_condensate(lattice_shape: Sequence[int], mass: float) -> float:
    """The free ``(1/V) Re tr D^{-1} = (1/V) sum_p 2 a / (a^2 + sum_mu sin^2 p_mu)``, ``a = m + sum_mu (1 - cos p_mu)``."""
    p0, p1 = _momenta(lattice_shape)
    a = mass + (1 - torch.cos(p0)) + (1 - torch.cos(p1))
    return float((2 * a / (a**2 + torch.sin(p0) ** 2 + torch.sin(p1) ** 2)).sum() / math.prod(lattice_shape))


def free_pion_correlator(lattice_shape: Sequence[int], mass: float) -> Tensor:
    """The free ``C(t)``, float64 ``(L_0,)``, from :func:`free_propagator`."""
    return free_propagator(lattice_shape, mass).abs().square().sum(dim=(0, 1, 3))

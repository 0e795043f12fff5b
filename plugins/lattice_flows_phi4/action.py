"""The phi^4 action of a real scalar field on a periodic lattice of any dimension ``D``.

Two parameterisations of one family, chosen in the spec by the keys given (exactly one pair):

- hopping form, ``kappa, lam``::

      S[phi] = sum_n [ -2 kappa sum_mu phi(n) phi(n + mu) + (1 - 2 lam) phi(n)^2 + lam phi(n)^4 ]

- standard form, ``m2, lam0`` (field ``varphi``)::

      S[varphi] = sum_n [ sum_mu (varphi(n + mu) - varphi(n))^2 / 2 + m2 varphi(n)^2 / 2 + lam0 varphi(n)^4 ]
                = sum_n [ -sum_mu varphi(n) varphi(n + mu) + (D + m2 / 2) varphi(n)^2 + lam0 varphi(n)^4 ]

Each evaluates its own formula on the field it is given, so the two describe the same theory with
differently normalised fields: with ``kappa > 0``, ``varphi = sqrt(2 kappa) phi``,
``m2 = (1 - 2 lam) / kappa - 2 D`` and ``lam0 = lam / (4 kappa^2)`` give ``S_standard[varphi] =
S_hopping[phi]`` exactly (:meth:`Phi4.to_standard`, :meth:`Phi4.to_hopping`; the densities of ``phi``
and ``varphi`` differ by the constant Jacobian ``(2 kappa)^(V/2)``). Observables measure the field as
it is, so ``<phi^2>`` of a standard-form run is ``2 kappa`` times that of the equivalent hopping run.

Both are ``S = sum_n [ -c sum_mu x(n) x(n + mu) + a x(n)^2 + b x(n)^4 ]`` with the coefficients of
:meth:`Phi4.coefficients`. Other conventions map onto the standard form: the ``S = sum [ sum_mu
phi (2 phi - phi_{+mu} - phi_{-mu}) + m^2 phi^2 + lambda phi^4 ]`` of Albergo et al. (1904.12072,
2101.08176) is ``m2 = m^2, lam0 = lambda / 4`` for ``varphi = sqrt(2) phi``; their ``m^2 = -4,
lambda = 8`` in 2D is ``kappa = 0.25, lam = 0.5``.

The symmetries are ``x -> -x`` and the lattice translations (and reflections, not used here).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, Sequence

import attrs
import torch
from torch import Tensor

from lattice_flows import Action
from lattice_flows.errors import ParameterError

__all__ = ["Phi4", "Coefficients", "optional_real"]

HOPPING = ("kappa", "lam")
STANDARD = ("m2", "lam0")


def optional_real(*, help: str, ge: float | None = None):
    """A real-number parameter that may be left out (``None``); ints are accepted and converted; NaN and
    +-inf are rejected (how large a finite one may be depends on the lattice and dtype: the simulation
    checks that the action of a starting field is finite)."""

    def check(instance, attribute, value):
        if value is None:
            return
        expected = "a number" + (f" >= {ge}" if ge is not None else "")
        if not isinstance(value, float):
            raise ParameterError(attribute.name, f"expected {expected}, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ParameterError(attribute.name, f"expected a finite number{expected[len('a number'):]}, got {value!r}")
        if ge is not None and not value >= ge:
            raise ParameterError(attribute.name, f"expected {expected}, got {value!r}")

    def convert(value):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    return attrs.field(default=None, converter=convert, validator=check, metadata={"help": help, "type": "number"})


class Coefficients(NamedTuple):
    """``S = sum_n [ -hopping sum_mu x(n) x(n + mu) + quadratic x(n)^2 + quartic x(n)^4 ]``."""

    hopping: float
    quadratic: float
    quartic: float


@attrs.frozen(kw_only=True)
class Phi4(Action):
    """phi^4 theory of a real scalar field, ``x`` of shape ``(B, L_0, ..., L_{D-1})``, any ``D``.

    Give either ``kappa`` and ``lam`` (hopping form) or ``m2`` and ``lam0`` (standard form); see the
    module docstring for both formulas and the map between them.

    Example:
        >>> import torch
        >>> action = Phi4(kappa=0.25, lam=0.5)
        >>> x = torch.ones(1, 4, 4, dtype=torch.float64)
        >>> float(action(x))  # 16 sites x (-2 * 0.25 * 2 + 0 + 0.5)
        -8.0
        >>> standard, scale = action.to_standard(2)
        >>> (standard.m2, standard.lam0), float(standard(scale * x))
        ((-4.0, 2.0), -8.0)
    """

    theory: ClassVar[str] = "phi4"
    dimensions: ClassVar[tuple[int, ...] | None] = None
    example_params: ClassVar[dict] = {"kappa": 0.2, "lam": 0.02}

    kappa: float | None = optional_real(help="hopping parameter kappa (hopping form; give it with lam)")
    lam: float | None = optional_real(help="quartic coupling lambda of the hopping form (>= 0; give it with kappa)", ge=0.0)
    m2: float | None = optional_real(help="bare mass squared m^2 of the standard form (give it with lam0)")
    lam0: float | None = optional_real(help="quartic coupling lambda_0 of the standard form (>= 0; give it with m2)", ge=0.0)

    def __attrs_post_init__(self):
        given = [name for name in HOPPING + STANDARD if getattr(self, name) is not None]
        choice = "give either kappa and lam (hopping form) or m2 and lam0 (standard form)"
        if not given:
            raise ParameterError("kappa", f"{choice}; got none of them")
        hopping = [n for n in given if n in HOPPING]
        standard = [n for n in given if n in STANDARD]
        if hopping and standard:
            raise ParameterError(standard[0], f"{choice}, not both; got {', '.join(given)}")
        for pair, present in ((HOPPING, hopping), (STANDARD, standard)):
            if present and len(present) == 1:
                missing = pair[1 - pair.index(present[0])]
                raise ParameterError(missing, f"{choice}; got {present[0]} without {missing}")

    # -- the two forms ------------------------------------------------------------------------

    @property
    def form(self) -> str:
        """``"hopping"`` or ``"standard"``: which pair of parameters this action was given."""
        return "hopping" if self.kappa is not None else "standard"

    def coefficients(self, n_dims: int) -> Coefficients:
        """The coefficients of ``x x_{+mu}``, ``x^2`` and ``x^4`` on a ``n_dims``-dimensional lattice."""
        if self.form == "hopping":
            return Coefficients(2 * self.kappa, 1 - 2 * self.lam, self.lam)
        return Coefficients(1.0, n_dims + self.m2 / 2, self.lam0)

    def to_standard(self, n_dims: int) -> tuple["Phi4", float]:
        """The same theory in the standard form and the field scale: ``(action, s)`` with
        ``action(s * phi) == self(phi)`` (``s = sqrt(2 kappa)``; needs ``kappa > 0``)."""
        if self.form == "standard":
            return self, 1.0
        if not self.kappa > 0:
            raise ValueError(f"only kappa > 0 has a standard form (whose hopping term is -1), got kappa = {self.kappa}")
        m2 = (1 - 2 * self.lam) / self.kappa - 2 * n_dims
        return Phi4(m2=m2, lam0=self.lam / (4 * self.kappa**2)), math.sqrt(2 * self.kappa)

    def to_hopping(self, n_dims: int) -> tuple["Phi4", float]:
        """The same theory in the hopping form and the field scale: ``(action, s)`` with
        ``action(s * varphi) == self(varphi)`` (``s = 1 / sqrt(2 kappa)``).

        ``kappa`` solves ``8 lam0 kappa^2 + (m2 + 2 D) kappa - 1 = 0`` (its positive root), then
        ``lam = 4 lam0 kappa^2``; with ``lam0 = 0``, ``kappa = 1 / (m2 + 2 D)`` (needs ``m2 + 2 D > 0``).
        """
        if self.form == "hopping":
            return self, 1.0
        A = self.m2 + 2 * n_dims
        root = math.sqrt(A * A + 32 * self.lam0)
        if A > 0:
            kappa = 2 / (A + root)  # the same root without cancellation (and 1 / A for lam0 = 0)
        elif self.lam0 > 0:
            kappa = (root - A) / (16 * self.lam0)
        else:
            raise ValueError(f"lam0 = 0 with m2 + 2D = {A} <= 0 has no hopping form with kappa > 0")
        return Phi4(kappa=kappa, lam=4 * self.lam0 * kappa**2), 1 / math.sqrt(2 * kappa)

    def to_spec(self) -> dict[str, Any]:
        """The pair of parameters this action was given."""
        names = HOPPING if self.form == "hopping" else STANDARD
        return {name: getattr(self, name) for name in names}

    # -- the Action contract ----------------------------------------------------------------------

    def free_kernel_minimum(self, lattice_shape: Sequence[int]) -> float:
        """``min_p K(p)`` of the quadratic part ``S_2 = (1/2V) sum_p K(p) |x_p|^2``,
        ``K(p) = 2 a - 2 c sum_mu cos p_mu``, over the lattice momenta ``p_mu = 2 pi k / L_mu``."""
        c, a, _ = self.coefficients(len(lattice_shape))
        total = 2 * a
        for L in lattice_shape:
            cosines = [math.cos(2 * math.pi * k / L) for k in range(L)]
            total -= 2 * c * (max(cosines) if c > 0 else min(cosines))
        return total

    def field_shape(self, lattice_shape: Sequence[int]) -> tuple[int, ...]:
        """``(L_0, ..., L_{D-1})``. With no quartic term the action must be bounded below (``K(p) > 0``)."""
        shape = tuple(lattice_shape)
        if not shape or any(not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"phi4 needs a lattice shape of positive sizes [L_0, ...], got {list(shape)}")
        if self.coefficients(len(shape)).quartic == 0 and not self.free_kernel_minimum(shape) > 0:
            raise ValueError(
                f"phi4 without a quartic term ({self._describe()}) is unbounded below on the lattice {list(shape)}: "
                f"the smallest eigenvalue of the quadratic form is {self.free_kernel_minimum(shape):.6g} <= 0 "
                f"(the free field needs |kappa| < 1/(2D) = {1 / (2 * len(shape)):g}, or m2 > 0)"
            )
        return shape

    def _describe(self) -> str:
        return ", ".join(f"{k} = {v:g}" for k, v in self.to_spec().items())

    def __call__(self, x: Tensor) -> Tensor:
        c, a, b = self.coefficients(x.dim() - 1)
        x2 = x * x
        density = x2 * (a + b * x2)
        for mu in range(1, x.dim()):
            density = density - c * x * torch.roll(x, -1, mu)
        return density.flatten(1).sum(1)

    def force(self, x: Tensor) -> Tensor:
        """``dS/dx(n) = -c sum_mu (x(n + mu) + x(n - mu)) + 2 a x(n) + 4 b x(n)^3``."""
        c, a, b = self.coefficients(x.dim() - 1)
        neighbours = torch.zeros_like(x)
        for mu in range(1, x.dim()):
            neighbours += torch.roll(x, -1, mu) + torch.roll(x, 1, mu)
        return x * (2 * a + 4 * b * x * x) - c * neighbours

    def sample_prior(self, n, lattice_shape, *, generator, dtype, device) -> Tensor:
        """Independent standard normal site variables, ``(n, L_0, ..., L_{D-1})``."""
        return torch.randn((n, *self.field_shape(lattice_shape)), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``sum_n (-x(n)^2 / 2) - (V / 2) log(2 pi)``, normalised, ``(B,)``."""
        return -0.5 * x.square().flatten(1).sum(1) - 0.5 * x[0].numel() * math.log(2 * math.pi)

    def random_symmetry(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Each configuration under its own uniformly drawn non-identity element of ``Z_2 x`` translations.

        The ``2 V - 1`` elements ``(sign, shift)`` other than the identity are equally likely, so the
        result always differs from ``x`` (unless ``x`` has that symmetry itself).
        """
        B, shape = x.shape[0], x.shape[1:]
        V = math.prod(shape)
        k = torch.randint(1, 2 * V, (B,), generator=generator, device=x.device)
        sign = (1 - 2 * (k % 2)).to(x.dtype)
        shift = k // 2  # flat index of the translation vector, row-major over shape
        source = torch.zeros((B, V), dtype=torch.int64, device=x.device)  # y(n) = sign * x(n - shift)
        sites = torch.arange(V, device=x.device)
        stride = V
        for L in shape:
            stride //= L
            coord = (sites // stride) % L
            s = (shift // stride) % L
            source += ((coord[None, :] - s[:, None]) % L) * stride
        y = torch.gather(x.reshape(B, V), 1, source).view_as(x)
        return y * sign.view(-1, *([1] * len(shape)))

"""``u1_plaquette_coupling``: gauge-equivariant plaquette coupling layers (Kanwar et al., arXiv:2003.06413).

Layer ``i`` has a direction ``mu`` and an offset ``o`` (:func:`.masks.layer_labels`; 8 consecutive
layers make every link active once) and acts on link angles ``(B, 2, L_0, L_1)`` as follows, with
the plaquette sets of :mod:`.masks`:

1. the conditioner, a convolutional net with circular padding (:func:`lattice_flows.nn.conv_net`),
   reads ``(cos x_P, sin x_P)`` on the frozen plaquettes (zero elsewhere) and, with ``rectangles``
   (the default), ``(cos x_R, sin x_R)`` of the ``1 x 2`` rectangle ``x_R(n) = x_P(n) + x_P(n - e_nu)``
   at each active site ``n`` (zero elsewhere), and gives the raw parameters of a circle map ``h``
   (:mod:`.circle_maps`) at every site. The rectangle is the active plaquette joined to its passive
   one; it does not hold the active link, so the layer leaves it unchanged, and it tells the map of
   ``x_P(n)`` the value of the neighbour that the update will move the other way;
2. each active plaquette moves to ``h(x_P)``: its active link changes by ``sign * (h(x_P) - x_P)``,
   ``sign`` the link's sign in that plaquette, so the passive plaquette holding the link moves by
   ``-(h(x_P) - x_P)``;
3. ``log|det dx/dz|`` gains ``sum log h'(x_P)`` over the active plaquettes (the Jacobian is triangular:
   the frozen plaquettes hold no active link, and each active link sits in one active plaquette).

Plaquettes and the conditioner's inputs are gauge invariant, so the flow is gauge equivariant,
``f(g.z) = g.f(z)`` modulo ``2 pi``; outputs are wrapped into ``[-pi, pi)``. The nets' last layers start
at zero, so a new flow is the identity, unless ``von_mises_beta`` is set (kernel ``spline``): then the
first period of layers starts as the single-plaquette map from ``exp(latent_beta cos u)`` to
``exp(von_mises_beta cos x_P)`` (:func:`von_mises_start`), the later layers as the identity. Weights know
no lattice size; everything that does (masks, gather indices) is a non-persistent buffer, so a
``state_dict`` saved on one lattice loads on any other.

How it is computed: :func:`kernel_path` chooses one of three implementations of the same maths,

- ``"fused"`` (the default): :mod:`.coupling_fused`, each layer one autograd node with a hand-written
  backward, convolutions as gathers and batched products;
- ``"plain"``: :mod:`.coupling_plain`, ordinary differentiable torch operations (``conv2d`` with
  circular padding by gathers, slices of the plaquettes), no custom autograd node;
- ``"compile"``: the plain forward through ``torch.compile`` (one compiled graph per flow, dtype,
  device, batch size and grad mode; the first call of each compiles, seconds to minutes).

They agree to rounding, not bit for bit (sums run in other orders); the fused path is the default
because it is the one whose results the regression fingerprints hold. The measured speeds and the
command: ``docs/flows.md``. The inverse takes the conditioner of the path (the plain one for ``"compile"``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from lattice_flows import Flow
from lattice_flows.nn import ACTIVATIONS, conv_net
from lattice_flows.errors import ParameterError
from lattice_flows.params import choice, flag, integer, odd_integer, real, widths

from ..geometry import plaquette_angles, wrap
from . import coupling_fused as fused
from . import coupling_plain as plain
from . import masks
from .circle_maps import NCP, CircleMap, CircularSpline
from .coupling_fused import circular_indices
from .poisson import von_mises_spline_logits

__all__ = ["PlaquetteCouplingFlow", "conditioner", "von_mises_start", "von_mises_halves", "von_mises_start_halves", "circular_indices", "KERNEL_PATHS", "kernel_path", "set_kernel_path"]

NAME = "u1_plaquette_coupling"


KERNEL_PATHS = ("fused", "plain", "compile")
_path = "fused"


def kernel_path() -> str:
    """The implementation the coupling layers take now: one of :data:`KERNEL_PATHS`."""
    return _path


def set_kernel_path(path: str) -> str:
    """Make the coupling layers of every :class:`PlaquetteCouplingFlow` take ``path`` (one of
    :data:`KERNEL_PATHS`); returns the previous one. For benchmarks and tests: specs do not name it."""
    global _path
    if path not in KERNEL_PATHS:
        raise ValueError(f"unknown kernel path {path!r}; expected one of {', '.join(KERNEL_PATHS)}")
    previous, _path = _path, path
    return previous


def conditioner(plaq: Tensor, mask: Tensor, net: nn.Sequential, plan: fused.Plan | None = None, nu: int = 0) -> Tensor:
    """Evaluate a :func:`~lattice_flows.nn.conv_net` on the masked ``(cos, sin)`` of loops.

    ``plaq``: ``(L_0, L_1, B)``; ``mask``: ``(L_0, k, L_1, 1)``, ``k = 1`` (the plaquettes it keeps) or
    ``k = 2`` (then also the rectangles ``x_P(n) + x_P(n - e_nu)`` it keeps). Returns
    ``(L_0, n_params, L_1, B)``, what the net gives on the ``(B, 2k, L_0, L_1)`` features, transposed.
    Differentiable to any order. ``plan`` caches index tensors and buffers between calls (fused path).
    """
    if kernel_path() != "fused" or not fused.supported(net):
        return plain.conditioner(plaq, mask, net, plain.net_params(net), nu)
    if plan is None:
        plan = fused.Plan(plaq.shape[:2], net[0].kernel_size[0], plaq.device)
    return fused.conditioner(plaq, mask, net, plan, nu)


def von_mises_halves(latent_beta: float, beta: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The two halves of the start map, ``((latent_beta, mid), (mid, beta))`` with ``mid`` their mean: the
    ``mu = 0`` layers of the first period take the first, the ``mu = 1`` layers the second (each plaquette is
    active once in each direction per period; composed, the halves give the whole map)."""
    mid = 0.5 * (latent_beta + beta)
    return (latent_beta, mid), (mid, beta)


def von_mises_start(latent_beta: float, beta: float, n_bins: int, min_bin: float = 1e-3, min_derivative: float = 1e-3) -> np.ndarray:
    """Raw :class:`.circle_maps.CircularSpline` parameters ``(3 n_bins + 1,)`` (float64) of the map from
    von Mises(``latent_beta``) to von Mises(``beta``) on one plaquette, as
    :func:`.poisson.von_mises_spline_logits` builds it (bins the map would make narrower than ``min_bin``
    of the circle are kept at that size, and the slopes above ``min_derivative``: both only where the
    densities are tiny); no shift. Non-finite if a bin is too narrow for float64."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        w, h, log_slopes = von_mises_spline_logits(beta, n_bins, latent_beta)
        scale = 1 - min_bin * n_bins  # CircularSpline: size = (softmax * scale + min_bin) * 2 pi

        def logits(raw):
            share = np.exp(raw - raw.max())
            share /= share.sum()
            return np.log(np.maximum(share - min_bin, 1e-6 * min_bin) / scale)

        d = np.exp(log_slopes)
        raw_d = np.log(np.expm1(np.maximum(d - min_derivative, 1e-300))) - math.log(math.expm1(1 - min_derivative))
    return np.concatenate([logits(w), logits(h), raw_d, [0.0]])


def von_mises_start_halves(latent_beta: float, beta: float, n_bins: int) -> list[np.ndarray]:
    """:func:`von_mises_start` of both :func:`von_mises_halves` (the ``mu = 0`` layers' map first), or
    ``ValueError`` if a half has bins too narrow for float64 (a non-finite parameter)."""
    starts = []
    for lo, hi in von_mises_halves(latent_beta, beta):
        start = von_mises_start(lo, hi, n_bins)
        if not np.isfinite(start).all():
            raise ValueError(
                f"the starting spline from beta {lo:g} to {hi:g} with n_bins = {n_bins} has bins narrower than "
                "float64 resolves"
            )
        starts.append(start)
    return starts


# -- the flow -----------------------------------------------------------------------------------


class PlaquetteCouplingFlow(Flow):
    """A stack of gauge-equivariant plaquette coupling layers for 2D U(1) links ``(B, 2, L_0, L_1)``.

    ``L_0`` and ``L_1`` must be multiples of 4. ``forward(z) -> (x, log|det dx/dz|)``,
    ``inverse(x) -> (z, log|det dz/dx|)``, log-determinants ``(B,)``; outputs in ``[-pi, pi)``.
    The circle map of the active plaquettes is :attr:`circle_map`, an :class:`.circle_maps.NCP` or a
    :class:`.circle_maps.CircularSpline` according to the spec's ``kernel``.

    Example:
        >>> flow = PlaquetteCouplingFlow(PlaquetteCouplingFlow.Config(n_layers=8, hidden=[4]), (8, 8))
        >>> z = torch.rand(3, 2, 8, 8) * 6 - 3
        >>> x, logdet = flow(z)
        >>> x.shape, logdet.shape
        (torch.Size([3, 2, 8, 8]), torch.Size([3]))
    """

    theory: ClassVar[str] = "u1"
    example_params: ClassVar[dict] = {"n_layers": 8, "hidden": [4], "kernel": "ncp", "n_mixture": 2}

    @attrs.frozen(kw_only=True)
    class Config:
        """Spec parameters of ``u1_plaquette_coupling``."""

        n_layers: int = integer(help="number of coupling layers (8 make every link active once)", default=16, ge=1)
        hidden: tuple[int, ...] = widths(help="channels of the hidden convolutions of each conditioner", default=(8, 8))
        kernel_size: int = odd_integer(help="size of the convolution kernels (odd)", default=3)
        activation: str = choice(tuple(ACTIVATIONS), help="activation between convolutions", default="tanh")
        kernel: str = choice(
            ("ncp", "spline"),
            help="circle map of the active plaquettes: 'spline' (rational-quadratic) or 'ncp' (tan mixtures)",
            default="spline",
        )
        n_mixture: int = integer(help="number of terms of the NCP mixture (kernel 'ncp')", default=6, ge=1)
        n_bins: int = integer(help="number of spline bins (kernel 'spline')", default=8, ge=2)
        rectangles: bool = flag(
            help="the conditioners also read the 1x2 rectangles made of an active and its passive plaquette "
            "(the layer leaves them unchanged)",
            default=True,
        )
        von_mises_beta: float = real(
            help="kernel 'spline': start the first 8 layers as the single-plaquette map from exp(latent_beta cos u) "
            "to exp(von_mises_beta cos x_P), in two halves (mu = 0 layers to the mean of the two betas, mu = 1 layers "
            "the rest); 0 starts as the identity",
            default=0.0, ge=0.0, le=100.0,
        )
        latent_beta: float = real(
            help="with von_mises_beta: the latent plaquettes' beta of the starting map", default=0.0, ge=0.0, le=100.0,
        )

        def __attrs_post_init__(self):
            if self.von_mises_beta > 0 and self.kernel != "spline":
                raise ParameterError(
                    "von_mises_beta", f"the von Mises start needs kernel = 'spline', got kernel = {self.kernel!r}"
                )
            if self.von_mises_beta > 0:
                try:
                    von_mises_start_halves(self.latent_beta, self.von_mises_beta, self.n_bins)
                except ValueError as exc:
                    raise ParameterError("von_mises_beta", f"{exc}; use a smaller von_mises_beta or fewer bins") from None

    def __init__(self, config: Config, lattice_shape: Sequence[int]):
        self.check_lattice(lattice_shape)
        super().__init__(config, lattice_shape)
        self.circle_map: CircleMap = (
            NCP(n_mixture=config.n_mixture) if config.kernel == "ncp" else CircularSpline(n_bins=config.n_bins)
        )
        self.labels = [masks.layer_labels(i) for i in range(config.n_layers)]
        self.nets = nn.ModuleList(
            conv_net(
                4 if config.rectangles else 2,
                config.hidden,
                self.circle_map.n_params,
                kernel_size=config.kernel_size,
                activation=config.activation,
            )
            for _ in range(config.n_layers)
        )
        period = min(config.n_layers, masks.PERIOD)
        if config.von_mises_beta > 0:  # the first period's last layers: mu = 0 the first half of the map, mu = 1 the second
            starts = [torch.from_numpy(start)
                      for start in von_mises_start_halves(config.latent_beta, config.von_mises_beta, config.n_bins)]
            with torch.no_grad():
                for i in range(period):
                    last = self.nets[i][-1]
                    last.weight.zero_()
                    last.bias.copy_(starts[self.labels[i][0]])
        inputs = []
        for label in self.labels[:period]:
            m = masks.plaquette_masks(lattice_shape, *label)
            # the rectangle x_P(n) + x_P(n - e_nu) at an active n is its plaquette and the passive one
            inputs.append(torch.stack([m.frozen, m.active] if config.rectangles else [m.frozen]))
        # (period, L_0, k, L_1, 1), float so that a product keeps the dtype (it follows .to()).
        self.register_buffer("input_masks", torch.stack(inputs).permute(0, 2, 1, 3)[..., None].float(), persistent=False)
        self._plans: dict = {}

    @classmethod
    def check_lattice(cls, lattice_shape: Sequence[int]) -> None:
        masks.check_shape(lattice_shape, NAME)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (2, *self.lattice_shape):
            raise ValueError(
                f"{NAME} built for lattice {list(self.lattice_shape)} expects link angles of shape "
                f"(B, 2, {', '.join(map(str, self.lattice_shape))}), got {tuple(x.shape)}"
            )

    def _plan(self, device) -> fused.Plan:
        plan = self._plans.get(device)
        if plan is None:
            plan = self._plans[device] = fused.Plan(self.lattice_shape, self.config.kernel_size, device)
        return plan

    def _layer(self, i: int, plaq: Tensor, plan: fused.Plan, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer ``i`` on the plaquettes ``(L_0, L_1, B)`` on the fused path where the net allows it:
        ``(plaquettes after, displacement, log-det (B,))``."""
        mu, offset = self.labels[i]
        net = self.nets[i]
        params = plain.net_params(net)
        if fused.supported(net):
            need_state = torch.is_grad_enabled() and (plaq.requires_grad or any(p.requires_grad for p in params))
            layer = (plan, net, self.circle_map, mu, offset, need_state)
            return fused.CouplingLayer.apply(plaq, mask, layer, *params)
        return plain.layer(plaq, mask, net, self.circle_map, mu, offset, params, plain_map=True)

    def _params(self, i: int, plaq: Tensor, plan: fused.Plan) -> Tensor:
        """Raw circle-map parameters of layer ``i`` on its active plaquettes, ``(n_params, *S)``."""
        mask = self.input_masks[i % masks.PERIOD]
        out = conditioner(plaq, mask, self.nets[i], plan, nu=1 - self.labels[i][0]).contiguous()
        return plain.param_stripe(out, *self.labels[i])

    def _links(self, z: Tensor, deltas: list) -> Tensor:
        """``z`` plus the plaquette displacements put on the active links (layer ``i``'s in ``deltas[i]``),
        wrapped: ``(B, 2, L_0, L_1)``."""
        L0, L1 = self.lattice_shape
        B = z.shape[0]
        shifts = []
        for mu in (0, 1):
            stripes = []
            for offset in range(4):
                ds = [d for d, label in zip(deltas, self.labels) if label == (mu, offset)]
                if not ds:
                    stripes.append(z.new_zeros((L0, L1 // 4, B) if mu == 0 else (L0 // 4, L1, B)))
                else:
                    stripes.append(ds[0] if len(ds) == 1 else torch.stack(ds).sum(0))
            shift = torch.stack(stripes, dim=2 if mu == 0 else 1).view(L0, L1, B)
            shifts.append(shift if masks.ACTIVE_SIGN[mu] > 0 else -shift)
        return wrap(z + torch.stack(shifts).permute(3, 0, 1, 2))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(z)
        path = kernel_path()
        if path == "plain":
            return self._forward_plain(z)
        if path == "compile":
            return self._compiled_forward()(z)
        plan = self._plan(z.device)
        plaq = plaquette_angles(z).permute(1, 2, 0).contiguous()  # (L_0, L_1, B)
        deltas, logdets = [], []
        inputs = self.input_masks.unbind(0)
        for i in range(len(self.labels)):
            plaq, delta, logdet = self._layer(i, plaq, plan, inputs[i % masks.PERIOD])
            deltas.append(delta)
            logdets.append(logdet)
        return self._links(z, deltas), torch.stack(logdets).sum(0)

    def _forward_plain(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` in ordinary torch operations (:mod:`.coupling_plain`), for links ``(B, 2, L_0, L_1)``."""
        plaq = plaquette_angles(z).permute(1, 2, 0).contiguous()  # (L_0, L_1, B)
        deltas, logdets = [], []
        inputs = self.input_masks.unbind(0)
        for i, (mu, offset) in enumerate(self.labels):
            net = self.nets[i]
            plaq, delta, logdet = plain.layer(
                plaq, inputs[i % masks.PERIOD], net, self.circle_map, mu, offset, plain.net_params(net), plain_map=True
            )
            deltas.append(delta)
            logdets.append(logdet)
        return self._links(z, deltas), torch.stack(logdets).sum(0)

    def _compiled_forward(self):
        """``torch.compile`` of :meth:`_forward_plain`, made on first use and kept with the flow (not
        in its ``state_dict``)."""
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = self.__dict__["_compiled"] = torch.compile(self._forward_plain, dynamic=False)
        return compiled

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        plan = self._plan(x.device)
        plaq = plaquette_angles(x).permute(1, 2, 0).contiguous()
        deltas, logdets = [None] * len(self.labels), []
        for i in reversed(range(len(self.labels))):
            mu, offset = self.labels[i]
            new = plain.stripe(plaq, mu, offset)
            old, logd = self.circle_map.inverse(new, self._params(i, plaq, plan))
            delta = old - new
            logdets.append(logd.sum(dim=(0, 1)))
            plaq = plain.moved(plaq, delta, mu, offset)
            deltas[i] = delta
        return self._links(x, deltas), torch.stack(logdets).sum(0)

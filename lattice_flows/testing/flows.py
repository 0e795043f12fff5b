"""The contract of a :class:`~lattice_flows.Flow`, as one function: :func:`check_flow`."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import attrs
import torch
from torch import Tensor

from ..base import Action, Flow
from ._common import ContractError, action_lattices, build, check_meta, component_name, generator, lattice_family
from .actions import as_action

__all__ = ["check_flow", "flow_lattices", "refused_lattice", "randomize", "IdentityFlow", "identity_flow"]

#: How many of a flow's lattices the kit checks it on (the smallest ones).
N_LATTICES = 3


def _accepts(cls: type, shape: Sequence[int]) -> bool:
    try:
        cls.check_lattice(tuple(shape))
        return True
    except ValueError:
        return False


def flow_lattices(flow: type, action: Action | type, n: int = N_LATTICES) -> list[tuple[int, ...]]:
    """The lattices the kit checks ``flow`` on: its :attr:`~Flow.example_lattices` if it declares any, else
    lattices that its ``check_lattice`` accepts among the action's test lattices with each side multiplied by
    1 to 4: the two smallest of the dimension of the smallest, the smallest of each other dimension, then the
    next smallest up to ``n`` in all (for the U(1) couplings, which need multiples of 4: ``(4, 4), (4, 8), (8, 4)``).
    The first two have the same number of dimensions, so that weights can move between them."""
    declared = getattr(flow, "example_lattices", ())
    if declared:
        return [tuple(int(k) for k in s) for s in declared]
    accepted = [s for s in lattice_family(action_lattices(action)) if _accepts(flow, s)]
    if not accepted:
        return []
    first = [s for s in accepted if len(s) == len(accepted[0])][:2]
    others = [next(s for s in accepted if len(s) == d) for d in sorted({len(s) for s in accepted} - {len(first[0])})]
    chosen = first + others
    chosen += [s for s in accepted if s not in chosen][: max(0, n - len(chosen))]
    return chosen


def refused_lattice(flow: type, action: Action | type) -> tuple[int, ...] | None:
    """A lattice near the flow's own that ``check_lattice`` refuses (one side 1 or 2 larger, or another
    number of dimensions), or None if it accepts them all."""
    accepted = flow_lattices(flow, action, n=2)
    candidates = [tuple(n + d if i == 0 else n for i, n in enumerate(s)) for s in accepted for d in (1, 2)]
    candidates += [(7,), (5, 5, 5, 5)]
    return next((s for s in candidates if not _accepts(flow, s)), None)


def randomize(flow: Flow, seed: int, scale: float = 0.3) -> Flow:
    """Random weights far from the identity map, in place: biases and vectors ``scale * N(0, 1)``, weight
    tensors ``N(0, 1) * 4 scale / sqrt(fan in)`` (a layer's outputs as large whatever its inputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            std = scale if p.dim() < 2 else 4 * scale / math.sqrt(p[0].numel())
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow


class IdentityFlow(Flow):
    """``f(z) = z``, ``log|det| = 0``, for any theory (``identity_flow`` sets it): what the kit gives the flow
    samplers when no flow of the theory is at hand (through it FTHMC is HMC and flow IMH samples the prior)."""

    theory = "any"

    @attrs.frozen(kw_only=True)
    class Config:
        pass

    def __init__(self, config, lattice_shape):
        super().__init__(config, lattice_shape)
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])


def identity_flow(action: Action, lattice_shape: Sequence[int]) -> Flow:
    """An :class:`IdentityFlow` of ``action``'s theory on ``lattice_shape``."""
    flow = IdentityFlow(IdentityFlow.Config(), lattice_shape)
    flow.theory = action.theory
    return flow


def _dist(action: Action, a: Tensor, b: Tensor) -> float:
    # Fields compared as the action sees them: the difference folded by normalize (mod 2 pi for angles).
    return float(action.normalize(a - b).abs().max())


def check_flow(
    flow: type,
    action: Action | type,
    *,
    params: Mapping[str, Any] | None = None,
    lattice_shapes: Sequence[Sequence[int]] | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    batch: int = 2,
) -> list[str]:
    """Check the flow class ``flow`` with the prior of ``action`` (an instance or a class).

    Built from ``example_params`` updated by ``params`` on each lattice of ``lattice_shapes`` (default
    :func:`flow_lattices`), in float64 on ``device`` with :func:`randomize`\\ d weights unless said otherwise;
    fields are compared as ``action.normalize(a - b)``:

    - ``theory``: its ``theory`` is the action's;
    - ``inverse``: ``inverse(forward(z)) = z`` to ``1e-10``, log-determinants ``(batch,)`` that cancel to ``1e-9``;
    - ``logdet_matches_jacobian``: on the smallest lattice the log-determinant equals ``log det`` of the autograd
      Jacobian of the unwrapped map (positive determinant) to ``1e-8``;
    - ``equivariant`` (if it declares itself ``equivariant``): ``f(g z) = g f(z)`` to ``1e-9`` for ``g`` from
      ``random_symmetry``, with the same log-determinant;
    - ``starts_near_identity``: as built (in ``dtype``), ``|f(z) - z| < 1e-5`` and ``|log det| < 1e-4``, in ``dtype`` on ``device``;
    - ``gradients``: every parameter gets a finite, non-zero gradient of the reverse-KL loss ``S(f(z)) - log det``;
    - ``state_dict_transfers``: weights from the first lattice load (strict) on the others and invert there;
    - ``refuses_lattice`` (if some nearby lattice is refused, :func:`refused_lattice`): ``check_lattice`` raises
      ``ValueError`` naming a size;
    - ``spec_round_trip``: ``from_spec(to_spec())`` gives the same parameters.

    Raises :class:`~lattice_flows.testing.ContractError`; returns the names of the checks that ran.
    """
    action = as_action(action)
    name = component_name(flow)
    device = torch.device(device)
    ran: list[str] = []
    if flow.theory != action.theory:
        raise ContractError(name, "theory", f"transforms {flow.theory!r} fields, but {component_name(action)} is a "
                            f"{action.theory!r} theory")
    shapes = [tuple(s) for s in (lattice_shapes or flow_lattices(flow, action))]
    if not shapes:
        raise ContractError(name, "lattices", f"check_lattice refuses every lattice tried "
                            f"({lattice_family(action_lattices(action))[:8]}, ...): declare example_lattices")

    def make(shape, dtype=torch.float64):
        for_lattice = build(flow, params, {"lattice_shape": shape, "action": action})
        return for_lattice.to(device=device, dtype=dtype)

    def prior(shape, n, s, dtype=torch.float64):
        return action.sample_prior(n, shape, generator=generator(device, s), dtype=dtype, device=device)

    def fail(check, shape, message):
        raise ContractError(name, check, f"on lattice {list(shape)}: {message}")

    for k, shape in enumerate(shapes):
        f = randomize(make(shape), seed + k)
        z = prior(shape, batch, seed + k)
        with torch.no_grad():
            x, logdet = f(z)
            z2, logdet_inv = f.inverse(x)
        check_meta(name, "inverse (x)", x, tuple(z.shape), torch.float64, device)
        check_meta(name, "inverse (logdet)", logdet, (batch,), torch.float64, device)
        check_meta(name, "inverse (inverse logdet)", logdet_inv, (batch,), torch.float64, device)
        if not _dist(action, z2, z) < 1e-10:
            fail("inverse", shape, f"|inverse(forward(z)) - z| = {_dist(action, z2, z):.3g} >= 1e-10")
        cancel = float((logdet + logdet_inv).abs().max())
        if not cancel < 1e-9:
            fail("inverse", shape, f"log-determinants of forward and inverse do not cancel: |sum| = {cancel:.3g} >= 1e-9")

        if flow.equivariant:
            with torch.no_grad():
                x_of_gz, logdet_gz = f(action.random_symmetry(z, generator(device, seed + k + 1)))
                g_of_x = action.random_symmetry(x, generator(device, seed + k + 1))
            if not _dist(action, x_of_gz, g_of_x) < 1e-9:
                fail("equivariant", shape, f"|f(g z) - g f(z)| = {_dist(action, x_of_gz, g_of_x):.3g} >= 1e-9 "
                     "(set equivariant = False if it is not meant to be)")
            if not float((logdet_gz - logdet).abs().max()) < 1e-9:
                fail("equivariant", shape, f"log det changes by {float((logdet_gz - logdet).abs().max()):.3g} under g")

        zb = prior(shape, max(batch, 2), seed + k)
        xb, logdet_b = f(zb)
        (action(xb) - logdet_b).mean().backward()
        for pname, p in f.named_parameters():
            if p.grad is None or not bool(torch.isfinite(p.grad).all()):
                fail("gradients", shape, f"parameter {pname} gets no finite gradient ({p.grad})")
            if not float(p.grad.abs().max()) > 0:
                fail("gradients", shape, f"parameter {pname} gets a zero gradient")
    ran += ["theory", "inverse"] + (["equivariant"] if flow.equivariant else []) + ["gradients"]

    smallest = min(shapes, key=math.prod)
    f = randomize(make(smallest), seed)
    z = prior(smallest, 1, seed)
    with torch.no_grad():
        _, logdet = f(z)
    # The Jacobian of the unwrapped map: x - z is smooth where wrapping is not.
    jac = torch.autograd.functional.jacobian(lambda u: (action.normalize(f(u)[0] - u) + u).reshape(-1), z)
    jac = jac.reshape(z[0].numel(), z[0].numel())
    sign, expected = torch.linalg.slogdet(jac)
    if not float(sign) > 0 or not abs(float(logdet[0]) - float(expected)) < 1e-8:
        fail("logdet_matches_jacobian", smallest, f"log det = {float(logdet[0]):.12g}, autograd Jacobian: sign "
             f"{float(sign):g}, log|det| {float(expected):.12g}")
    ran.append("logdet_matches_jacobian")

    for shape in shapes:
        built = make(shape, dtype)
        z = prior(shape, 3, seed, dtype)
        with torch.no_grad():
            x, logdet = built(z)
        check_meta(name, "starts_near_identity (x)", x, tuple(z.shape), dtype, device)
        check_meta(name, "starts_near_identity (logdet)", logdet, (3,), dtype, device)
        if not (_dist(action, x, z) < 1e-5 and float(logdet.abs().max()) < 1e-4):
            fail("starts_near_identity", shape, f"as built, |f(z) - z| = {_dist(action, x, z):.3g} (< 1e-5 expected), "
                 f"|log det| = {float(logdet.abs().max()):.3g} (< 1e-4 expected)")
    ran.append("starts_near_identity")

    small = randomize(make(shapes[0]), seed + 3)
    for other in [s for s in shapes[1:] if len(s) == len(shapes[0])]:
        big = make(other)
        try:
            big.load_state_dict(small.state_dict())  # strict: same keys, same shapes
        except RuntimeError as exc:
            fail("state_dict_transfers", other, f"weights from lattice {list(shapes[0])} do not load: {exc}")
        z = prior(other, 2, seed + 5)
        with torch.no_grad():
            z2, _ = big.inverse(big(z)[0])
        if not _dist(action, z2, z) < 1e-10:
            fail("state_dict_transfers", other, f"with weights from {list(shapes[0])}, |inverse(forward(z)) - z| = "
                 f"{_dist(action, z2, z):.3g}")
    if any(len(s) == len(shapes[0]) for s in shapes[1:]):
        ran.append("state_dict_transfers")

    refused = refused_lattice(flow, action)
    if refused is not None:
        try:
            flow.check_lattice(refused)
        except ValueError as exc:
            if not any(str(n) in str(exc) for n in refused):
                fail("refuses_lattice", refused, f"the message does not name the lattice: {exc}")
        ran.append("refuses_lattice")

    built = make(shapes[0])
    again = build(flow, built.to_spec(), {"lattice_shape": shapes[0], "action": action}, name=None)
    if again.to_spec() != built.to_spec() or again.config != built.config:
        fail("spec_round_trip", shapes[0], f"to_spec() {built.to_spec()} rebuilds as {again.to_spec()}")
    ran.append("spec_round_trip")
    return ran

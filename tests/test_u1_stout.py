"""What is specific to ``u1_stout`` (the generic flow contracts are in test_flow_contracts.py).

The masks and loops are checked against plaquettes and rectangles written out as closed paths, the
independence of the active links through the Jacobian of a layer, the bound that keeps every link
map increasing with saturated nets, and the Newton inverse with its failure mode.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from lattice_flows import FLOWS
from lattice_flows.errors import ParameterError, SpecError
from lattice_flows.spec import build_component
from lattice_flows_u1.flows.stout import PERIOD, StoutFlow, active_mask, frozen_plaquette_mask, loop_angles
from lattice_flows_u1.geometry import plaquette_angles, wrap


def _flow(shape=(8, 8), *, device="cpu", dtype=torch.float64, weight_scale=0.0, seed=0, **params):
    flow = StoutFlow(StoutFlow.Config(**{"n_layers": PERIOD, "hidden": [4], **params}), shape).to(device, dtype)
    if weight_scale:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in flow.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * weight_scale)
    return flow


def _links(shape, batch=3, *, seed=1, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return ((2 * torch.rand(batch, 2, *shape, generator=g, dtype=torch.float64) - 1) * math.pi).to(device, dtype)


# -- masks and loops ----------------------------------------------------------------------------


def _path(shape, start, steps):
    """Coefficients ``(2, L_0, L_1)`` of the links along a closed path of unit steps ``(direction, ±1)``."""
    c = torch.zeros(2, *shape, dtype=torch.float64)
    n = list(start)
    for mu, sign in steps:
        if sign < 0:
            n[mu] = (n[mu] - 1) % shape[mu]
        c[mu, n[0], n[1]] += sign
        if sign > 0:
            n[mu] = (n[mu] + 1) % shape[mu]
    assert n == list(start)
    return c


def _loops_through(shape, mu, site, rectangles):
    """The plaquettes (and rectangles) containing ``x_mu(site)``, oriented along it, as coefficient arrays."""
    shapes = [[(0, 1), (1, 1), (0, -1), (1, -1)]]
    if rectangles:
        shapes += [[(0, 1), (0, 1), (1, 1), (0, -1), (0, -1), (1, -1)], [(0, 1), (1, 1), (1, 1), (0, -1), (1, -1), (1, -1)]]
    found = []
    for steps in shapes:
        for n0 in range(shape[0]):
            for n1 in range(shape[1]):
                c = _path(shape, (n0, n1), steps)
                if c[mu, site[0], site[1]] != 0:
                    found.append(c * c[mu, site[0], site[1]])
    return found


def _loop_jacobian(shape, mu, rectangles):
    """``d W_k(n) / d x``: ``(K, L_0, L_1, 2, L_0, L_1)`` (the loops are linear in the links)."""
    x = torch.zeros(1, 2, *shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: loop_angles(plaquette_angles(t), mu, rectangles=rectangles), x)
    return jac[0, :, :, :, 0]


@pytest.mark.parametrize("rectangles", [False, True])
@pytest.mark.parametrize("mu", [0, 1])
def test_loops_are_the_plaquettes_and_rectangles_through_the_link(mu, rectangles):
    shape = (8, 8)
    jac = _loop_jacobian(shape, mu, rectangles)
    site = (3, 5)
    got = [jac[k, site[0], site[1]] for k in range(jac.shape[0])]
    expected = _loops_through(shape, mu, site, rectangles)
    assert len(got) == len(expected) == (8 if rectangles else 2)
    for c in expected:  # each loop appears exactly once, with +1 on the link itself
        assert sum(torch.equal(c, w) for w in got) == 1


@pytest.mark.parametrize("rectangles", [False, True])
@pytest.mark.parametrize("shape", [(4, 4), (8, 4), (4, 12), (8, 8)])
def test_a_period_of_layers_updates_every_link_once(shape, rectangles):
    flow = _flow(shape, rectangles=rectangles)
    count = torch.zeros(2, *shape, dtype=torch.long)
    for layer in flow.layers:
        count[layer.mu] += layer.active.long()
        assert layer.active.sum() * 4 == layer.active.numel()  # a quarter of the mu-links each time
    assert torch.equal(count, torch.ones_like(count))
    assert all(".net." in key for key in flow.state_dict())  # masks are not saved: size-free weights


@pytest.mark.parametrize("rectangles", [False, True])
@pytest.mark.parametrize("shape", [(4, 4), (4, 8), (8, 8)])
def test_no_loop_of_an_active_link_holds_another_active_link(shape, rectangles):
    for mu in (0, 1):
        jac = _loop_jacobian(shape, mu, rectangles)
        for offset in range(4):
            active = active_mask(shape, mu, offset, rectangles=rectangles)
            # Active links seen by each loop of each active link: only the link itself, with weight +1.
            seen = jac[:, active][:, :, mu][:, :, active]  # (K, n_active, n_active)
            eye = torch.eye(int(active.sum()), dtype=seen.dtype).expand_as(seen)
            assert torch.equal(seen, eye)
            # The conditioning plaquettes hold no active link.
            frozen = frozen_plaquette_mask(active, mu)
            p_jac = torch.autograd.functional.jacobian(plaquette_angles, torch.zeros(1, 2, *shape, dtype=torch.float64))
            assert not p_jac[0][frozen][:, 0, mu][:, active].any()


@pytest.mark.parametrize("rectangles", [False, True])
def test_layer_jacobian_is_identity_off_and_diagonal_on_the_active_links(rectangles):
    shape = (4, 8)
    flow = _flow(shape, rectangles=rectangles, weight_scale=0.7)
    x = _links(shape, batch=1)
    for layer in flow.layers:
        jac = torch.autograd.functional.jacobian(lambda t: layer(t)[0], x)[0].reshape(2 * 32, 2 * 32)
        links = torch.zeros(2, *shape, dtype=torch.bool)
        links[layer.mu] = layer.active
        links = links.reshape(-1)
        eye = torch.eye(64, dtype=jac.dtype)
        assert torch.equal(jac[~links], eye[~links])  # frozen links are untouched
        block = jac[links][:, links]
        assert torch.equal(block, torch.diag(torch.diagonal(block)))  # each active link sees only itself
        assert torch.all(torch.diagonal(block) > 0)
        assert torch.diagonal(block).log().sum().item() == pytest.approx(layer(x)[1].item(), abs=1e-12)


# -- identity, bound, inverse -------------------------------------------------------------------


@pytest.mark.parametrize("rectangles", [False, True])
def test_a_new_flow_is_the_identity(rectangles, device, dtype):
    flow = _flow((8, 4), rectangles=rectangles, device=device, dtype=dtype)
    z = _links((8, 4), device=device, dtype=dtype)
    x, logdet = flow(z)
    assert torch.equal(x, wrap(z)) and torch.equal(logdet, torch.zeros_like(logdet))
    z2, logdet2 = flow.inverse(x)
    assert torch.equal(z2, x) and torch.equal(logdet2, torch.zeros_like(logdet2))


@pytest.mark.parametrize("rectangles", [False, True])
def test_saturated_nets_keep_every_link_map_increasing(rectangles, device, dtype):
    bound = 0.95
    flow = _flow((8, 8), rectangles=rectangles, max_coefficient=bound, weight_scale=30.0, device=device, dtype=dtype)
    x = _links((8, 8), batch=8, device=device, dtype=dtype)
    with torch.no_grad():
        for layer in flow.layers:
            eps = layer.coefficients(plaquette_angles(x))
            total = eps.abs().sum(dim=1)
            assert total.max() <= bound
            assert total.max() > 0.9 * bound  # the nets do saturate: the bound is what holds
            assert torch.equal(total[:, ~layer.active], torch.zeros_like(total[:, ~layer.active]))
            slope = 1 + (eps * torch.cos(loop_angles(plaquette_angles(x), layer.mu, rectangles=rectangles))).sum(1)
            assert slope.min() >= 1 - bound - 1e-6
            x, logdet = layer(x)
            assert torch.isfinite(logdet).all()


@pytest.mark.parametrize("rectangles", [False, True])
def test_inverse_to_1e_10_in_float64(rectangles, device):
    flow = _flow((8, 8), rectangles=rectangles, weight_scale=1.0, device=device, seed=3)
    z = _links((8, 8), batch=16, device=device)
    x, logdet = flow(z)
    assert (x - z).abs().max() > 0.1  # the flow does something
    z2, logdet2 = flow.inverse(x)
    assert wrap(z2 - z).abs().max() < 1e-10
    assert (logdet + logdet2).abs().max() < 1e-10
    x2, _ = flow(z2)
    assert wrap(x2 - x).abs().max() < 1e-10


def test_inverse_converges_in_float32(device):
    flow = _flow((8, 8), rectangles=True, weight_scale=0.5, device=device, dtype=torch.float32)
    z = _links((8, 8), batch=16, device=device, dtype=torch.float32)
    x, logdet = flow(z)
    z2, logdet2 = flow.inverse(x)
    assert wrap(z2 - z).abs().max() < 1e-4 and (logdet + logdet2).abs().max() < 1e-3


def test_inverse_that_does_not_converge_raises(device):
    flow = _flow((8, 8), weight_scale=5.0, device=device)
    x, _ = flow(_links((8, 8), device=device))
    with pytest.raises(RuntimeError, match=r"did not converge in 1 Newton iterations: max residual \d"):
        flow.inverse(x, max_iterations=1)
    flow.max_iterations = 1
    with pytest.raises(RuntimeError, match="max residual"):
        flow.inverse(x)


# -- lattice and parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (6, 8), (2, 4), (0, 4), (8,), (4, 4, 4)])
def test_bad_lattice_sizes_are_refused_with_the_shape(shape):
    with pytest.raises(ValueError, match=re.escape(str(list(shape)))):
        StoutFlow.check_lattice(shape)
    with pytest.raises(ValueError, match=re.escape(str(list(shape)))):
        StoutFlow(StoutFlow.Config(), shape)


@pytest.mark.parametrize(
    "key, value",
    [
        ("n_layers", 0), ("n_layers", 2.0), ("n_layers", True),
        ("hidden", [0]), ("hidden", [8, -1]), ("hidden", [2.0]), ("hidden", [True]), ("hidden", 8), ("hidden", "8"),
        ("kernel_size", 2), ("kernel_size", -1), ("kernel_size", 3.0), ("kernel_size", True),
        ("activation", "sigmoid"), ("rectangles", "yes"), ("rectangles", 1),
        ("max_coefficient", 0.0), ("max_coefficient", 1.0), ("max_coefficient", 1.5), ("max_coefficient", "0.5"),
    ],
)
def test_bad_parameters_are_refused_with_the_value(key, value):
    with pytest.raises(ParameterError, match=re.escape(repr(value))) as info:
        StoutFlow.Config(**{key: value})
    assert info.value.param == key
    section = {"name": "u1_stout", key: value}
    with pytest.raises(SpecError, match=re.escape(f"spec['flow'][{key!r}]")):
        build_component("flows", section, "spec['flow']", {"lattice_shape": (8, 8)})


def test_spec_round_trip_and_registration():
    assert FLOWS.get("u1_stout") is StoutFlow
    params = {"n_layers": 3, "hidden": [6, 5], "kernel_size": 5, "activation": "gelu", "rectangles": True,
              "max_coefficient": 0.5}
    flow = build_component("flows", {"name": "u1_stout", **params}, "spec['flow']", {"lattice_shape": (4, 8)})
    assert flow.to_spec() == params and flow.config.hidden == (6, 5)
    defaults = StoutFlow.Config()
    assert (defaults.n_layers, defaults.hidden, defaults.kernel_size, defaults.activation) == (8, (8,), 3, "tanh")
    assert (defaults.rectangles, defaults.max_coefficient) == (False, 0.9)
    StoutFlow(StoutFlow.Config(**StoutFlow.example_params), (4, 4))

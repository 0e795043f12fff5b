"""The plaquette coupling flow ``u1_plaquette_coupling``: circle maps, masks, and the flow itself.

The generic flow contracts (inverse, log-det against the autograd Jacobian, equivariance, gradients,
state_dict across sizes) are in test_flow_contracts.py; here are the properties specific to this flow,
among them a comparison with a plain re-implementation (plaquettes recomputed from the links at every
layer, masks as multiplications, conv2d with circular padding).
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lattice_flows_u1.flows.coupling as coupling
from lattice_flows.errors import ParameterError
from lattice_flows.nn import ACTIVATIONS, conv_net
from lattice_flows_u1.flows import masks
from lattice_flows_u1.flows.circle_maps import NCP, CircularSpline
from lattice_flows_u1.flows.coupling import PlaquetteCouplingFlow, conditioner
from lattice_flows_u1.geometry import plaquette_angles, wrap

CIRCLE_MAPS = [
    NCP(n_mixture=1),
    NCP(n_mixture=2),
    NCP(n_mixture=5),
    CircularSpline(n_bins=2),
    CircularSpline(n_bins=7),
]
MAP_IDS = ["ncp1", "ncp2", "ncp5", "spline2", "spline7"]


def _angles(n, generator, dtype, device, *, low=-math.pi, high=math.pi):
    return (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).to(device, dtype)


def _params(cmap, n, generator, dtype, device, scale=1.0):
    return (scale * torch.randn(cmap.n_params, n, generator=generator, dtype=torch.float64)).to(device, dtype)


def _randomize(flow, seed, scale):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow


def _flow(shape=(8, 8), seed=None, scale=0.15, **params):
    config = PlaquetteCouplingFlow.Config(**{"n_layers": 8, "hidden": [4], "kernel": "ncp", "n_mixture": 3, "n_bins": 5, **params})
    flow = PlaquetteCouplingFlow(config, shape).double()
    return flow if seed is None else _randomize(flow, seed, scale)


def _links(batch, shape, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return ((2 * torch.rand(batch, 2, *shape, generator=g, dtype=torch.float64) - 1) * math.pi).to(device, dtype)


# -- circle maps --------------------------------------------------------------------------------


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
def test_zero_parameters_give_the_identity(cmap, device, dtype, tol):
    x = _angles(200, torch.Generator().manual_seed(0), dtype, device)
    y, logd = cmap.forward(x, torch.zeros(cmap.n_params, 200, dtype=dtype, device=device))
    assert y.dtype == dtype and y.device.type == device.type
    assert float(wrap(y - x).abs().max()) < 10 * tol
    assert float(logd.abs().max()) < 10 * tol


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
@given(seed=st.integers(0, 2**31 - 1))
def test_circle_map_is_an_increasing_bijection_of_the_circle(cmap, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-math.pi, math.pi, 2001, dtype=torch.float64, device=device)
    params = _params(cmap, 1, g, torch.float64, device, scale=2.0).expand(-1, x.numel())
    y, logd = cmap.forward(x, params)
    assert torch.all(y >= -math.pi) and torch.all(y < math.pi)
    d, logd2 = cmap.displacement(x, params)
    assert torch.allclose(logd, logd2, atol=1e-12)
    assert float(wrap(x + d - y).abs().max()) < 1e-12
    # The lift x + d(x) over one turn: increasing, without jumps, and gaining exactly 2 pi (degree 1).
    lift = x + d
    assert torch.all(torch.diff(lift) > 0)
    assert float(lift[-1] - lift[0]) == pytest.approx(2 * math.pi, abs=1e-9)
    assert torch.all(torch.isfinite(logd))


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
@given(seed=st.integers(0, 2**31 - 1))
def test_circle_map_inverse(cmap, seed, device, dtype, tol):
    g = torch.Generator().manual_seed(seed)
    x = _angles(300, g, dtype, device)
    params = _params(cmap, 300, g, dtype, device)
    y, logd = cmap.forward(x, params)
    x2, logd_inv = cmap.inverse(y, params)
    # round-off in y is amplified by 1/h'(x) in x: compare in proportion
    slack = torch.exp(-logd).clamp(min=1.0)
    assert torch.all(wrap(x2 - x).abs() <= 10 * tol * slack)
    assert torch.all((logd + logd_inv).abs() <= 10 * tol * slack)


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
def test_circle_map_inverse_reaches_1e_minus_10_in_float64(cmap, device):
    g = torch.Generator().manual_seed(7)
    x = _angles(2000, g, torch.float64, device)
    params = _params(cmap, 2000, g, torch.float64, device)
    y, logd = cmap.forward(x, params)
    x2, _ = cmap.inverse(y, params)
    well_conditioned = logd > -5  # elsewhere 1/h' amplifies the round-off of y beyond 1e-10 / 1e-16
    assert float(wrap(x2 - x)[well_conditioned].abs().max()) < 1e-10


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
def test_log_derivative_matches_autograd_and_finite_differences(cmap, device):
    g = torch.Generator().manual_seed(3)
    x = _angles(500, g, torch.float64, device, low=-3.1, high=3.1).requires_grad_(True)
    params = _params(cmap, 500, g, torch.float64, device)
    d, logd = cmap.displacement(x, params)
    (grad,) = torch.autograd.grad(d.sum(), x)
    assert torch.allclose(torch.log1p(grad), logd, atol=1e-10)
    eps = 1e-6
    with torch.no_grad():
        up, _ = cmap.forward(x + eps, params)
        down, _ = cmap.forward(x - eps, params)
    fd = wrap(up - down) / (2 * eps)
    assert torch.allclose(fd, torch.exp(logd), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
def test_displacement_derivatives_are_exact_to_second_order(cmap):
    g = torch.Generator().manual_seed(4)
    x = _angles(6, g, torch.float64, "cpu").requires_grad_(True)
    params = _params(cmap, 6, g, torch.float64, "cpu").requires_grad_(True)
    assert torch.autograd.gradcheck(cmap.displacement, (x, params))
    assert torch.autograd.gradgradcheck(cmap.displacement, (x, params))


@pytest.mark.parametrize("cmap", CIRCLE_MAPS, ids=MAP_IDS)
def test_fused_vector_jacobian_product_matches_autograd(cmap):
    g = torch.Generator().manual_seed(5)
    x = _angles(40, g, torch.float64, "cpu")
    params = _params(cmap, 40, g, torch.float64, "cpu")
    grad_d, grad_logd = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    d, logd, state = cmap.displacement_with_state(x, params)
    fused = cmap.displacement_vjp(x, params, state, grad_d, grad_logd)
    xr, pr = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
    d_ref, logd_ref = cmap.displacement(xr, pr)
    expected = torch.autograd.grad((d_ref, logd_ref), (xr, pr), (grad_d, grad_logd))
    assert torch.allclose(d, d_ref, atol=1e-12) and torch.allclose(logd, logd_ref, atol=1e-12)
    for a, b in zip(fused, expected):
        assert torch.allclose(a, b, atol=1e-10)


def test_spline_is_smooth_across_plus_minus_pi():
    cmap = CircularSpline(n_bins=6)
    params = torch.randn(cmap.n_params, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pi = math.pi
    x = torch.tensor([-pi, pi - 1e-6, pi - 1e-9, -pi + 1e-6, -pi + 1e-9], dtype=torch.float64)
    y, logd = cmap.forward(x, params.expand(-1, 5))
    assert float(wrap(y[2] - y[0]).abs()) < 1e-8  # h(pi^-) = h(-pi) on the circle
    # One derivative at both ends: log h' on either side tends to log h'(-pi) linearly in the distance
    # (a jump would leave a constant), so shrinking the distance 1000 times shrinks the difference as much.
    for far, near in ((1, 2), (3, 4)):
        ratio = float((logd[near] - logd[0]) / (logd[far] - logd[0]))
        assert ratio == pytest.approx(1e-3, rel=0.05)


def test_ncp_is_continuous_where_tan_diverges(device, dtype):
    # x rounded just outside [-pi, pi) must not flip tan(x/2) and jump by 2 pi
    cmap = NCP(n_mixture=3)
    params = torch.tensor([[0.7], [-1.3], [2.0], [0.4]], dtype=dtype, device=device).expand(-1, 4)
    eps = 1e-3 if dtype == torch.float32 else 1e-7
    x = torch.tensor([math.pi - eps, math.pi + eps, -math.pi - eps, -math.pi + eps], dtype=dtype, device=device)
    y, logd = cmap.forward(x, params)
    assert float(wrap(y[1] - y[0]).abs()) < 10 * eps and float(wrap(y[3] - y[2]).abs()) < 10 * eps
    assert torch.all(torch.isfinite(logd))


def test_ncp_survives_large_parameters():
    cmap = NCP(n_mixture=2)
    x = torch.linspace(-3.1, 3.1, 101, dtype=torch.float64)
    for s in (-60.0, 60.0):
        params = torch.tensor([[s], [s / 2], [0.3]], dtype=torch.float64).expand(-1, 101)
        y, logd = cmap.forward(x, params)
        assert torch.all(torch.isfinite(y)) and torch.all(torch.isfinite(logd))
        x2, _ = cmap.inverse(y, params)
        assert torch.all(torch.isfinite(x2))


def test_ncp_inverse_that_does_not_converge_raises():
    cmap = NCP(n_mixture=3, max_iter=1)
    g = torch.Generator().manual_seed(2)
    params = _params(cmap, 50, g, torch.float64, "cpu", scale=2.0)
    y = _angles(50, g, torch.float64, "cpu")
    with pytest.raises(RuntimeError, match=r"did not converge in 1 iterations: max residual"):
        cmap.inverse(y, params)


# -- masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 4), (8, 12), (12, 4)])
def test_plaquette_masks_partition_the_lattice(shape):
    for i in range(masks.PERIOD):
        mu, offset = masks.layer_labels(i)
        m = masks.plaquette_masks(shape, mu, offset)
        total = m.active.int() + m.passive.int() + m.frozen.int()
        assert torch.equal(total, torch.ones(shape, dtype=torch.int32))
        assert int(m.frozen.sum()) == shape[0] * shape[1] // 2
        assert int(m.active.sum()) == int(m.passive.sum()) == shape[0] * shape[1] // 4
        active = torch.zeros(1, *shape)
        active[(slice(None), *masks.stripe(mu, offset)[1:])] = 1
        assert torch.equal(active[0].bool(), m.active)


@pytest.mark.parametrize("shape", [(4, 4), (8, 12)])
def test_a_period_makes_every_link_active_exactly_once(shape):
    count = sum(masks.active_links(shape, *masks.layer_labels(i)).int() for i in range(masks.PERIOD))
    assert torch.equal(count, torch.ones(2, *shape, dtype=torch.int32))
    assert masks.layer_labels(masks.PERIOD) == masks.layer_labels(0)


def test_the_layer_order_leaves_most_plaquettes_with_an_active_update_last():
    # Over one period, the last update of 12 of the 16 plaquette classes (n_0 mod 4, n_1 mod 4)
    # is an active one (the alternating order of arXiv:2101.08176 manages 6).
    shape = (8, 8)
    last_active = torch.full(shape, -1)
    last_passive = torch.full(shape, -1)
    for i in range(masks.PERIOD):
        m = masks.plaquette_masks(shape, *masks.layer_labels(i))
        last_active[m.active] = i
        last_passive[m.passive] = i
    assert int((last_active > last_passive).sum()) == 12 * 4
    assert len(set(masks.ORDER)) == masks.PERIOD


@pytest.mark.parametrize("shape", [(4, 4), (8, 12)])
def test_active_links_sit_in_one_active_and_one_passive_plaquette_and_no_frozen_one(shape):
    for i in range(masks.PERIOD):
        mu, offset = masks.layer_labels(i)
        m = masks.plaquette_masks(shape, mu, offset)
        links = masks.active_links(shape, mu, offset).double()[None]
        signed = plaquette_angles(links)[0]  # sum of the active links' signs in each plaquette
        x0, x1 = links[:, 0], links[:, 1]
        count = (x0 + x1.roll(-1, 1) + x0.roll(-1, 2) + x1)[0]  # number of active links in each plaquette
        sign = masks.ACTIVE_SIGN[mu]
        assert torch.equal(count[m.active], torch.ones_like(count[m.active]))
        assert torch.equal(signed[m.active], torch.full_like(signed[m.active], sign))
        assert torch.equal(count[m.passive], torch.ones_like(count[m.passive]))
        assert torch.equal(signed[m.passive], torch.full_like(signed[m.passive], -sign))
        assert torch.equal(count[m.frozen], torch.zeros_like(count[m.frozen]))


@pytest.mark.parametrize("shape", [(6, 8), (8, 2), (8,), (4, 4, 4), (0, 4)])
def test_masks_need_2d_lattices_with_sizes_multiple_of_4(shape):
    with pytest.raises(ValueError, match=r"multiples of 4, got \[" + ", ".join(map(str, shape))):
        masks.check_shape(shape)


# -- the conditioner ----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_conditioner_equals_the_conv_net(activation, kernel_size):
    torch.manual_seed(1)
    net = conv_net(2, [2, 3], 3, kernel_size=kernel_size, activation=activation, zero_last=False).double()
    plaq = torch.randn(4, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(4, 1, 4, 1) > 0.5).double()
    features = torch.stack([torch.cos(plaq), torch.sin(plaq)], dim=1) * mask  # (L_0, 2, L_1, B)
    expected = net(features.permute(3, 1, 0, 2))  # nn.Conv2d with padding_mode="circular"
    out = conditioner(plaq, mask, net)
    assert torch.allclose(out, expected.permute(2, 1, 3, 0), atol=1e-12)
    params = list(net.parameters())
    assert torch.autograd.gradcheck(lambda q, *w: conditioner(q, mask, net), (plaq, *params))
    if kernel_size == 3 and activation in ("tanh", "gelu"):
        assert torch.autograd.gradgradcheck(lambda q, *w: conditioner(q, mask, net), (plaq, *params))


# -- the flow -----------------------------------------------------------------------------------


def _naive_flow(flow, z):
    """The flow written plainly: plaquettes from the links at every layer, masks as products."""
    x, logdet = z.clone(), z.new_zeros(z.shape[0])
    for i, (mu, offset) in enumerate(flow.labels):
        plaq = wrap(plaquette_angles(x))
        m = masks.plaquette_masks(flow.lattice_shape, mu, offset, device=z.device)
        features = [torch.cos(plaq) * m.frozen, torch.sin(plaq) * m.frozen]
        if flow.config.rectangles:  # the active plaquette plus the passive one, x_P(n) + x_P(n - e_nu)
            rect = plaq + plaq.roll(1, dims=1 + (1 - mu))
            features += [torch.cos(rect) * m.active, torch.sin(rect) * m.active]
        h = flow.nets[i](torch.stack(features, dim=1))
        y, logd = flow.circle_map.forward(plaq, h.movedim(1, 0))
        x = x.clone()
        x[:, mu] += masks.ACTIVE_SIGN[mu] * wrap(y - plaq) * m.active  # the link is in the plaquette at its site
        logdet = logdet + (logd * m.active).sum(dim=(1, 2))
    return wrap(x), logdet


@pytest.mark.parametrize("rectangles", [True, False])
@pytest.mark.parametrize("kernel", ["ncp", "spline"])
@pytest.mark.parametrize("shape", [(8, 8), (4, 12), (12, 8)])
def test_flow_equals_the_plain_implementation(kernel, shape, rectangles):
    flow = _flow(shape, seed=11, scale=0.3, kernel=kernel, n_layers=10, hidden=[3, 4], rectangles=rectangles)
    z = _links(3, shape, 12)
    with torch.no_grad():
        x, logdet = flow(z)
        x_ref, logdet_ref = _naive_flow(flow, z)
    assert float(wrap(x - x_ref).abs().max()) < 1e-9
    assert torch.allclose(logdet, logdet_ref, atol=1e-9)


@pytest.mark.parametrize("kernel", ["ncp", "spline"])
def test_flow_starts_as_the_identity(kernel, device, dtype):
    flow = PlaquetteCouplingFlow(PlaquetteCouplingFlow.Config(kernel=kernel), (8, 8)).to(device, dtype)
    z = _links(4, (8, 8), 0, dtype, device)
    with torch.no_grad():
        x, logdet = flow(z)
    assert x.dtype == dtype and logdet.dtype == dtype and x.device.type == device.type
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(wrap(x - z).abs().max()) < atol
    assert float(logdet.abs().max()) < 1e3 * atol


@pytest.mark.parametrize("kernel", ["ncp", "spline"])
@pytest.mark.parametrize("shape", [(8, 8), (4, 12)])
def test_flow_inverts_to_1e_minus_10_with_random_weights(kernel, shape, device):
    flow = _flow(shape, seed=21, kernel=kernel).to(device)
    z = _links(3, shape, 22, device=device)
    with torch.no_grad():
        x, logdet = flow(z)
        z2, logdet_inv = flow.inverse(x)
    assert float(wrap(x - z).abs().max()) > 0.1  # the weights are not negligible
    assert torch.all((x >= -math.pi) & (x < math.pi))
    assert float(wrap(z2 - z).abs().max()) < 1e-10
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=1e-10)


def test_flow_inverse_that_does_not_converge_raises():
    flow = _flow(seed=31, scale=0.5)
    flow.circle_map = attrs.evolve(flow.circle_map, max_iter=1)
    with torch.no_grad():
        x, _ = flow(_links(2, (8, 8), 32))
        with pytest.raises(RuntimeError, match="did not converge"):
            flow.inverse(x)


@pytest.mark.parametrize("kernel", ["ncp", "spline"])
def test_fused_layers_match_autograd_to_second_order(kernel, monkeypatch):
    from lattice_flows_u1.action import U1Wilson

    flow = _flow((4, 8), seed=41, scale=0.3, kernel=kernel, n_layers=4)
    action = U1Wilson(beta=2.0)
    z0 = _links(2, (4, 8), 42)

    def gradients():
        flow.zero_grad()
        z = z0.clone().requires_grad_(True)
        x, logdet = flow(z)
        (force,) = torch.autograd.grad((action(x) - logdet).sum(), z, create_graph=True)
        (force.square().sum() + (action(x) - logdet).sum()).backward()
        return [force.detach()] + [p.grad.clone() for p in flow.parameters()]

    fused = gradients()
    monkeypatch.setattr(coupling, "_path", "plain")  # plain autograd path
    reference = gradients()
    for a, b in zip(fused, reference):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("kernel", ["ncp", "spline"])
def test_logdet_matches_the_jacobian_on_a_rectangular_lattice(kernel):
    flow = _flow((4, 8), seed=51, scale=0.1, kernel=kernel)
    z = _links(1, (4, 8), 52)
    with torch.no_grad():
        _, logdet = flow(z)
    jac = torch.autograd.functional.jacobian(lambda u: (wrap(flow(u)[0] - u) + u).reshape(-1), z)
    sign, expected = torch.linalg.slogdet(jac.reshape(64, 64))
    # Weights small enough for a well-conditioned Jacobian (condition number about 20; larger random
    # weights reach 1e13, where round-off alone moves log det by 1e-6).
    assert float(sign) > 0 and float(logdet[0]) == pytest.approx(float(expected), rel=1e-12)


def test_float32_flow_follows_its_input_and_inverts():
    flow = _flow(seed=61).float()
    z = _links(3, (8, 8), 62, torch.float32)
    with torch.no_grad():
        x, logdet = flow(z)
        z2, _ = flow.inverse(x)
    assert x.dtype == torch.float32 and logdet.dtype == torch.float32
    assert float(wrap(z2 - z).abs().max()) < 1e-4


def test_state_dict_holds_only_size_free_weights():
    flow = _flow(seed=71)
    keys = set(flow.state_dict())
    assert keys == {name for name, _ in flow.named_parameters()}
    other = _flow((16, 4))
    other.load_state_dict(flow.state_dict())


@pytest.mark.parametrize("shape", [(6, 8), (8, 10), (8,), (8, 8, 8), (2, 4)])
def test_bad_lattice_sizes_are_an_error_at_build_time(shape):
    pattern = r"u1_plaquette_coupling needs .*multiples of 4, got \[" + ", ".join(map(str, shape)) + r"\]"
    with pytest.raises(ValueError, match=pattern):
        PlaquetteCouplingFlow.check_lattice(shape)
    with pytest.raises(ValueError, match=pattern):
        PlaquetteCouplingFlow(PlaquetteCouplingFlow.Config(), shape)


def test_wrong_input_shape_is_an_error():
    flow = _flow()
    with pytest.raises(ValueError, match=r"expects link angles of shape \(B, 2, 8, 8\), got \(1, 2, 4, 8\)"):
        flow(torch.zeros(1, 2, 4, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden", [8, 0], r"list of positive integers, got \[8, 0\]"),
        ("hidden", "8", r"list of positive integers, got '8'"),
        ("hidden", [2.0], r"list of positive integers, got \[2.0\]"),
        ("kernel_size", 4, "odd integer >= 1, got 4"),
        ("kernel", "rqs", "expected one of 'ncp', 'spline', got 'rqs'"),
        ("n_mixture", 0, ">= 1, got 0"),
        ("n_bins", 1, ">= 2, got 1"),
        ("n_layers", 0, ">= 1, got 0"),
        ("activation", "sigmoid", "got 'sigmoid'"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ParameterError, match=message) as info:
        PlaquetteCouplingFlow.Config(**{field: value})
    assert info.value.param == field


def test_spec_round_trip_and_defaults():
    from lattice_flows.spec import params_of

    config = PlaquetteCouplingFlow.Config()
    assert params_of(config) == {
        "n_layers": 16,
        "hidden": [8, 8],
        "kernel_size": 3,
        "activation": "tanh",
        "kernel": "spline",
        "n_mixture": 6,
        "n_bins": 8,
        "rectangles": True,
        "von_mises_beta": 0.0,
        "latent_beta": 0.0,
    }
    flow = PlaquetteCouplingFlow.from_spec(
        {"hidden": [3], "kernel": "spline"},
        name="u1_plaquette_coupling",
        path="spec['flow']",
        context={"lattice_shape": (8, 4)},
    )
    assert flow.to_spec()["hidden"] == [3] and isinstance(flow.circle_map, CircularSpline)
    small = PlaquetteCouplingFlow(PlaquetteCouplingFlow.Config(**PlaquetteCouplingFlow.example_params), (4, 4))
    assert sum(p.numel() for p in small.parameters()) < 2500


# -- the von Mises start (issue 16) -------------------------------------------------------------


@pytest.mark.parametrize("latent_beta, beta", [(0.0, 3.0), (2.0, 6.0)])
def test_von_mises_start_maps_a_single_layers_active_plaquettes_to_the_half_map(latent_beta, beta):
    """One layer (``mu = 0``) from the start: an active plaquette ``u`` goes to ``h(u)``, the first half map
    from von Mises(latent_beta) to von Mises(mid), checked by the moments of ``h(u)`` under ``u``'s density
    (quadrature), and its ``log h'`` against the exact ``log p_latent(u) - log p_mid(h(u))`` where both
    densities exceed 1e-3 of their peaks."""
    flow = PlaquetteCouplingFlow(
        PlaquetteCouplingFlow.Config(n_layers=1, kernel="spline", n_bins=64, von_mises_beta=beta, latent_beta=latent_beta),
        (4, 4),
    ).double()
    (lo, mid), _ = coupling.von_mises_halves(latent_beta, beta)
    assert lo == latent_beta and mid == 0.5 * (latent_beta + beta)
    params = flow.nets[0][-1].bias.detach()[:, None]  # the net's last layer starts at zero: its bias is the map
    assert torch.allclose(params[:, 0], torch.from_numpy(coupling.von_mises_start(lo, mid, 64)), atol=1e-6)
    u = torch.linspace(-math.pi, math.pi, 200001, dtype=torch.float64)[:-1]
    with torch.no_grad():
        theta, log_slope = flow.circle_map.forward(u, params.expand(-1, u.numel()))
    weights = torch.exp(lo * (torch.cos(u) - 1))
    b = torch.tensor(mid, dtype=torch.float64)
    expected = float(torch.special.i1(b) / torch.special.i0(b))
    assert float((torch.cos(theta) * weights).sum() / weights.sum()) == pytest.approx(expected, abs=2e-3)
    log_norm = math.log(float(torch.special.i0(b) / torch.special.i0(torch.tensor(lo, dtype=torch.float64))))
    exact = lo * torch.cos(u) - mid * torch.cos(theta) + log_norm
    # where either density is not tiny (bins narrower than min_bin are kept at min_bin: the tails differ)
    bulk = (weights > 1e-3) & (torch.exp(mid * (torch.cos(theta) - 1)) > 1e-3)
    assert float((log_slope - exact)[bulk].abs().max()) < 0.1
    # and the flow's layer does this to the active plaquettes of a field
    z = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 * math.pi - math.pi
    x, logdet = flow(z)
    mu, offset = flow.labels[0]
    active = masks.plaquette_masks((4, 4), mu, offset).active
    before, after = plaquette_angles(z)[:, active], plaquette_angles(x)[:, active]
    with torch.no_grad():
        mapped, slopes = flow.circle_map.forward(before.reshape(-1), params.expand(-1, before.numel()))
    assert float(wrap(after.reshape(-1) - mapped).abs().max()) < 1e-10
    assert torch.allclose(logdet.detach(), slopes.reshape(3, -1).sum(1), atol=1e-10)


def test_von_mises_start_inverts_and_only_the_first_period_is_set():
    flow = PlaquetteCouplingFlow(
        PlaquetteCouplingFlow.Config(n_layers=12, kernel="spline", n_bins=16, von_mises_beta=6.0, latent_beta=2.0), (8, 8)
    ).double()
    assert all(float(flow.nets[i][-1].bias.detach().abs().max()) > 0 for i in range(8))
    assert all(float(flow.nets[i][-1].bias.detach().abs().max()) == 0 for i in range(8, 12))
    z = torch.rand(4, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 * math.pi - math.pi
    x, logdet = flow(z)
    back, logdet_back = flow.inverse(x)
    assert float(wrap(back - z).abs().max()) < 1e-9 and float((logdet + logdet_back).detach().abs().max()) < 1e-8


@pytest.mark.parametrize("params, message", [
    ({"kernel": "ncp", "von_mises_beta": 6.0}, "needs kernel = 'spline'"),
    ({"kernel": "spline", "n_bins": 256, "von_mises_beta": 100.0}, "narrower than float64 resolves"),
])
def test_von_mises_start_refuses_what_it_cannot_build(params, message):
    with pytest.raises(ParameterError, match=message):
        PlaquetteCouplingFlow.Config(**params)

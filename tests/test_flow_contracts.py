"""Contract battery for every registered flow (and the toy affine flow of tests/toy_plugins.py).

Each flow is built from its ``example_params`` (widths drawn by Hypothesis where it has ``hidden``)
and its weights are randomised first: a flow that starts as the identity would pass the tests
trivially. Differences of fields are compared after ``action.normalize`` (mod 2 pi for angles).
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lattice_flows import ACTIONS, FLOWS, SpecError
from lattice_flows.spec import build_component

FLOW_NAMES = FLOWS.names()


def _action_for(flow_cls):
    for name in ACTIONS.names():
        cls = ACTIONS.get(name)
        if cls.theory == flow_cls.theory:
            return build_component("actions", {"name": name, **cls.example_params}, "test", {})
    pytest.skip(f"no registered action of theory {flow_cls.theory!r}")


def _fits(cls, shape) -> bool:
    try:
        cls.check_lattice(shape)
        return True
    except ValueError:
        return False


def _build(name, shape, params=None, *, device, dtype):
    cls = FLOWS.get(name)
    action = _action_for(cls)
    params = {**cls.example_params, **(params or {})}
    flow = build_component("flows", {"name": name, **params}, "test", {"lattice_shape": shape, "action": action})
    return flow.to(device=device, dtype=dtype), action


def _randomize(flow, seed, scale=0.3):
    """Random weights far from the identity map: biases and vectors ``scale * N(0, 1)``, weight
    tensors ``N(0, 1) * 4 scale / sqrt(fan in)`` (a layer's outputs as large whatever its inputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            std = scale if p.dim() < 2 else 4 * scale / math.sqrt(p[0].numel())
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow


def _prior(action, shape, batch, seed, device, dtype):
    g = torch.Generator(device=device).manual_seed(seed)
    return action.sample_prior(batch, shape, generator=g, dtype=dtype, device=device)


@st.composite
def flow_cases(draw, name):
    cls = FLOWS.get(name)
    shape = draw(st.sampled_from([(4, 4), (4, 8), (8, 4), (8, 8), (12, 8)]))
    assume(_fits(cls, shape))
    params = {}
    if "hidden" in attrs.fields_dict(cls.Config):
        params["hidden"] = draw(st.lists(st.integers(1, 6), min_size=1, max_size=2))
    return shape, params, draw(st.integers(0, 2**31 - 1)), draw(st.integers(1, 3))


def _random_case(name, data, device, min_batch=1):
    """A drawn lattice, width, seed and batch: the flow in float64 with random weights, and prior fields."""
    shape, params, seed, batch = data.draw(flow_cases(name))
    flow, action = _build(name, shape, params, device=device, dtype=torch.float64)
    _randomize(flow, seed)
    z = _prior(action, shape, max(batch, min_batch), seed, device, torch.float64)
    return flow, action, z, seed


def _dist(action, a, b):
    return float(action.normalize(a - b).abs().max())


@pytest.mark.parametrize("name", FLOW_NAMES)
@given(data=st.data())
def test_flow_inverts_to_round_off(name, data, device):
    flow, action, z, seed = _random_case(name, data, device)
    batch = z.shape[0]
    with torch.no_grad():
        x, logdet = flow(z)
        z2, logdet_inv = flow.inverse(x)
    assert x.shape == z.shape and logdet.shape == (batch,) and logdet_inv.shape == (batch,)
    assert _dist(action, z2, z) < 1e-10
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=1e-9)


@pytest.mark.parametrize("name", FLOW_NAMES)
@given(seed=st.integers(0, 2**31 - 1))
def test_flow_logdet_matches_autograd_jacobian(name, seed, device):
    shape = (4, 4)
    flow, action = _build(name, shape, device=device, dtype=torch.float64)
    _randomize(flow, seed)
    z = _prior(action, shape, 1, seed, device, torch.float64)
    with torch.no_grad():
        _, logdet = flow(z)
    # The Jacobian of the unwrapped map: x - z is smooth where wrapping is not.
    jac = torch.autograd.functional.jacobian(lambda u: (action.normalize(flow(u)[0] - u) + u).reshape(-1), z)
    jac = jac.reshape(z[0].numel(), z[0].numel())
    sign, expected = torch.linalg.slogdet(jac)
    assert float(sign) > 0
    assert logdet[0].item() == pytest.approx(float(expected), abs=1e-8)


@pytest.mark.parametrize("name", FLOW_NAMES)
@given(data=st.data())
def test_flow_is_equivariant(name, data, device):
    if not FLOWS.get(name).equivariant:
        pytest.skip("flow declares it is not equivariant")
    flow, action, z, seed = _random_case(name, data, device)
    with torch.no_grad():
        x_of_gz, logdet_gz = flow(action.random_symmetry(z, torch.Generator(device=device).manual_seed(seed + 1)))
        x, logdet = flow(z)
        g_of_x = action.random_symmetry(x, torch.Generator(device=device).manual_seed(seed + 1))
    assert _dist(action, x_of_gz, g_of_x) < 1e-9
    assert torch.allclose(logdet_gz, logdet, atol=1e-9)


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_flow_starts_close_to_the_identity(name, device, dtype):
    shape = (8, 8)
    flow, action = _build(name, shape, device=device, dtype=dtype)
    z = _prior(action, shape, 3, 0, device, dtype)
    with torch.no_grad():
        x, logdet = flow(z)
    assert x.dtype == dtype and logdet.dtype == dtype and x.device.type == device.type
    assert _dist(action, x, z) < 1e-5
    assert float(logdet.abs().max()) < 1e-4


@pytest.mark.parametrize("name", FLOW_NAMES)
@given(data=st.data())
def test_every_parameter_gets_a_gradient(name, data, device):
    flow, action, z, seed = _random_case(name, data, device, min_batch=2)
    x, logdet = flow(z)
    (action(x) - logdet).mean().backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert float(p.grad.abs().max()) > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("name", FLOW_NAMES)
@pytest.mark.parametrize("other", [(4, 4), (16, 8)])
def test_state_dict_loads_at_another_lattice_size(name, other, device):
    small, action = _build(name, (8, 8), device=device, dtype=torch.float64)
    _randomize(small, 3)
    big, _ = _build(name, other, device=device, dtype=torch.float64)
    big.load_state_dict(small.state_dict())  # strict: same keys, same shapes
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), big.state_dict().values()))
    z = _prior(action, other, 2, 5, device, torch.float64)
    with torch.no_grad():
        x, _ = big(z)
        z2, _ = big.inverse(x)
    assert _dist(action, z2, z) < 1e-10


#: Lattices that some flow refuses (the U(1) couplings want multiples of 4, checkerboards even sizes).
REFUSAL_CANDIDATES = [(6, 8), (5, 4), (3, 3), (7,)]


def _refused_lattice(cls):
    for shape in REFUSAL_CANDIDATES:
        if not _fits(cls, shape):
            return shape
    pytest.skip(f"{cls.__name__} accepts every candidate lattice {REFUSAL_CANDIDATES}")


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_wrong_lattice_size_is_a_clear_error(name):
    cls = FLOWS.get(name)
    shape = _refused_lattice(cls)
    with pytest.raises(ValueError, match="|".join(sorted({str(n) for n in shape}))):  # the message names the size
        cls.check_lattice(shape)


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_flow_spec_round_trip(name):
    cls = FLOWS.get(name)
    from lattice_flows import Simulation

    action = _action_for(cls)
    spec = {
        "lattice": {"shape": [8, 8]},
        "action": {"name": ACTIONS.name_of(type(action)), **action.to_spec()},
        "flow": {"name": name, **cls.example_params},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
    }
    sim = Simulation.from_spec(spec)
    assert Simulation.from_spec(sim.to_spec()) == sim
    assert sim.to_spec()["flow"]["name"] == name
    with pytest.raises(SpecError, match=r"spec\['lattice'\]\['shape'\]"):
        Simulation.from_spec({**spec, "lattice": {"shape": list(_refused_lattice(cls))}})

"""The kernel paths of ``u1_plaquette_coupling`` (``coupling.set_kernel_path``): the fused layers
(hand-written backward), the plain autograd layers and ``torch.compile`` of the plain ones compute the
same flow to rounding, and the fused path's private operators are checked before use."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

import lattice_flows_u1.flows.coupling as coupling
import lattice_flows_u1.flows.coupling_fused as fused
from lattice_flows_u1.action import U1Wilson
from lattice_flows_u1.flows.coupling import PlaquetteCouplingFlow


def _flow(shape, kernel, rectangles, activation="tanh", seed=3):
    config = PlaquetteCouplingFlow.Config(
        n_layers=8, hidden=[3, 4], kernel=kernel, n_mixture=3, n_bins=5, rectangles=rectangles, activation=activation
    )
    flow = PlaquetteCouplingFlow(config, shape).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return flow


def _links(batch, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(batch, 2, *shape, generator=g, dtype=torch.float64) - 1) * math.pi


def _outputs(flow, z0, path, monkeypatch):
    """Links, log-dets, the latent force and the weight gradients of a reverse-KL-like loss on ``path``."""
    monkeypatch.setattr(coupling, "_path", path)
    flow.zero_grad()
    z = z0.clone().requires_grad_(True)
    x, logdet = flow(z)
    loss = (U1Wilson(beta=2.0)(x) - logdet).sum()
    loss.backward()
    return [x.detach(), logdet.detach(), z.grad] + [p.grad.clone() for p in flow.parameters()]


@pytest.mark.parametrize("rectangles", [True, False])
@pytest.mark.parametrize("kernel", ["ncp", "spline"])
@pytest.mark.parametrize("shape", [(8, 8), (4, 12)])
def test_fused_and_plain_paths_agree_in_values_logdets_and_gradients(kernel, shape, rectangles, monkeypatch):
    flow = _flow(shape, kernel, rectangles)
    z = _links(3, shape, 4)
    fused_out = _outputs(flow, z, "fused", monkeypatch)
    plain_out = _outputs(flow, z, "plain", monkeypatch)
    assert float((fused_out[0] - z).abs().max()) > 0.1  # the weights are not negligible
    for a, b in zip(fused_out, plain_out):  # rounding: relative to the largest entry (spline forces reach 1e4 with these weights)
        assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max()) + 1e-12, float((a - b).abs().max())


def test_the_plain_path_has_no_custom_autograd_node(monkeypatch):
    flow = _flow((4, 8), "ncp", True)
    monkeypatch.setattr(coupling, "_path", "plain")
    x, logdet = flow(_links(2, (4, 8), 5).requires_grad_(True))
    seen, todo = set(), [logdet.grad_fn, x.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        assert "BackwardCFunction" not in type(node).__name__, type(node).__name__  # a custom Function's node
        todo.extend(n for n, _ in node.next_functions)
    assert len(seen) > 100


def test_an_unknown_kernel_path_is_an_error():
    with pytest.raises(ValueError, match=r"unknown kernel path 'fast'; expected one of fused, plain, compile"):
        coupling.set_kernel_path("fast")
    assert coupling.kernel_path() == "fused"


def test_a_private_operator_that_changed_falls_back_to_plain_with_one_warning(monkeypatch, caplog):
    flow = _flow((8, 8), "ncp", True)
    z = _links(2, (8, 8), 6)
    expected = _outputs(flow, z, "plain", monkeypatch)
    # as if torch had changed the signature of aten.tanh_backward
    broken = {**fused._ACTIVATION_BACKWARD, nn.Tanh: lambda g, z, y, m: torch.ops.aten.tanh_backward(g)}
    monkeypatch.setattr(fused, "_ACTIVATION_BACKWARD", broken)
    fused._backward_works.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=fused.__name__):
            assert not fused.supported(flow.nets[0])
            got = _outputs(flow, z, "fused", monkeypatch)
            got = _outputs(flow, z, "fused", monkeypatch)
    finally:
        fused._backward_works.cache_clear()
    warnings = [r for r in caplog.records if r.name == fused.__name__]
    assert len(warnings) == 1 and "Tanh" in warnings[0].getMessage() and "plain autograd path" in warnings[0].getMessage()
    for a, b in zip(got, expected):
        assert torch.equal(a, b)  # the plain path itself, bit for bit
    assert fused.supported(nn.Sequential(nn.Conv2d(2, 2, 3), nn.GELU()))  # other activations stay fused


def test_the_private_operators_of_every_activation_pass_their_check():
    assert all(fused._backward_works(kind) for kind in fused._ACTIVATION_BACKWARD)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["ncp", "spline"])
def test_compiled_path_agrees_with_plain(kernel, monkeypatch):
    flow = _flow((4, 8), kernel, True)
    z = _links(2, (4, 8), 7)
    plain_out = _outputs(flow, z, "plain", monkeypatch)
    compiled_out = _outputs(flow, z, "compile", monkeypatch)
    for a, b in zip(plain_out, compiled_out):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), float((a - b).abs().max())

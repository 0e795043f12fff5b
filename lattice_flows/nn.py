"""Small neural-network building blocks shared by flows of any theory."""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "conv_net"]

#: Activation functions a spec may name.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def conv_net(
    in_channels: int,
    hidden: Sequence[int],
    out_channels: int,
    *,
    kernel_size: int,
    activation: str,
    n_dims: int = 2,
    zero_last: bool = True,
) -> nn.Sequential:
    """A stack of ``n_dims``-D convolutions with circular padding: ``in -> hidden... -> out`` channels.

    Input ``(B, in_channels, L_0, ..., L_{n-1})``, output ``(B, out_channels, L_0, ...)`` for any
    lattice size: the weights know no size, so a trained net runs on a larger lattice unchanged.
    ``kernel_size`` must be odd (the output stays centred on its site). With ``zero_last`` the last
    layer starts at zero, so a flow built on this net starts as (close to) the identity.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; available: {', '.join(ACTIVATIONS)}")
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n_dims]
    widths = [in_channels, *hidden, out_channels]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        layers.append(conv(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular"))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    if zero_last:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)

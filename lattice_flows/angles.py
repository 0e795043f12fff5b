"""Helpers for angle-valued fields (compact variables in radians), shared by the theories that have them.

Theory-neutral: every function takes tensors of any shape and follows their dtype and device.

- :func:`wrap`: angles folded into ``[-pi, pi)`` up to round-off (fast);
- :func:`wrap_exact`: the same, exactly inside ``[-pi, pi)`` with ``pi`` rounded to the dtype;
- :func:`pi_of`: ``pi`` rounded to a dtype;
- :func:`uniform_angles` and :func:`uniform_log_prob`: the uniform (Haar) distribution on ``[-pi, pi)^n``,
  the prior of a flow over angles and the ``beta = 0`` distribution of a compact theory.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = uniform_angles((3, 2, 4), generator=g, dtype=torch.float64, device="cpu")
>>> bool(((x >= -math.pi) & (x < math.pi)).all()), uniform_log_prob(x).shape
(True, torch.Size([3]))
>>> float(wrap(torch.tensor(3 * math.pi / 2, dtype=torch.float64))) == -math.pi / 2
True
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["wrap", "wrap_exact", "pi_of", "uniform_angles", "uniform_log_prob"]


def wrap(theta: Tensor) -> Tensor:
    """Angles folded into ``[-pi, pi)``, same shape and dtype (right up to round-off: see :func:`wrap_exact`)."""
    # floor is several times faster than torch.remainder on the CPU; both give [-pi, pi) up to round-off.
    turns = torch.mul(theta, 1 / (2 * math.pi)).add_(0.5).floor_()
    return torch.add(theta, turns, alpha=-2 * math.pi)


@functools.lru_cache(maxsize=None)
def pi_of(dtype: torch.dtype) -> float:
    """``pi`` rounded to ``dtype``, as a Python float (``3.1415927410125732`` for ``float32``)."""
    return float(torch.tensor(math.pi, dtype=dtype))


def wrap_exact(theta: Tensor) -> Tensor:
    """Angles folded into ``[-pi, pi)`` exactly, same shape and dtype: ``-pi <= result < pi`` with ``pi``
    rounded to the dtype (``float32``'s ``pi`` is ``3.14159274``, above the real one).

    :func:`wrap` is right only up to round-off: an angle just below ``pi`` can come back just below
    ``-pi``, and a value just outside the interval (a spline's knot ``-pi + sum of widths``, say) can
    stay outside. The one or two values per tensor that do are moved by a turn; ``2 pi`` and ``pi``
    differ by a power of two, so the move itself rounds into the interval. NaN stays NaN.
    Differentiable (the moves are constants).

    >>> import torch
    >>> pi = torch.tensor(math.pi, dtype=torch.float32)
    >>> x = torch.stack([pi, torch.nextafter(pi, -pi), -pi, torch.nextafter(-pi, 2 * -pi)])
    >>> y = wrap_exact(x)
    >>> bool(((y >= -pi) & (y < pi)).all()), float(y[0]) == -float(pi)
    (True, True)
    """
    r = wrap(theta)
    pi = pi_of(r.dtype)
    with torch.no_grad():  # the turns to add, -1, 0 or 1: constants, so one autograd node in all
        turns = (r < -pi).to(r.dtype).sub_((r >= pi).to(r.dtype))
    return torch.add(r, turns, alpha=2 * pi)


def uniform_angles(shape: Sequence[int], *, generator: torch.Generator | None, dtype: torch.dtype, device) -> Tensor:
    """Independent angles uniform in ``[-pi, pi)``, of shape ``shape``: ``(2 u - 1) pi``, ``u`` from
    ``torch.rand`` with ``generator`` (so a seed gives the same angles as ever)."""
    u = torch.rand(tuple(shape), generator=generator, dtype=dtype, device=device)
    return (2 * u - 1) * math.pi


def uniform_log_prob(x: Tensor) -> Tensor:
    """Log-density of the uniform distribution on ``[-pi, pi)^n`` for a batch ``x`` ``(B, ...)`` of
    ``n`` angles each: ``-n log(2 pi)``, shape ``(B,)``, in the dtype and on the device of ``x``."""
    return x.new_full((x.shape[0],), -x[0].numel() * math.log(2 * math.pi))

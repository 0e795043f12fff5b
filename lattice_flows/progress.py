"""Progress bars (tqdm) for training and sampling, shown only where someone can watch them."""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: int, initial: int, enabled: bool | None, *, desc: str, unit: str):
    """A tqdm bar, or ``None`` when ``enabled`` is false (``None``: only if standard error is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

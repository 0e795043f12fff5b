"""The run table: its reserved columns, and the per-update records of the chains made into a DataFrame.

A run's table has one row per chain and measured trajectory: the reserved columns
:data:`RESERVED_COLUMNS` (``chain``, ``trajectory``, ``accepted``, ``delta_H``), whatever else the
sampler reports, then one column per observable. This module is the one place those names are written;
the building of a run (no observable may take one), the analysis and the figures read them from here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["CHAIN", "TRAJECTORY", "ACCEPTED", "DELTA_H", "RESERVED_COLUMNS", "records_table"]

#: The chain id (0-based, over all ranks).
CHAIN = "chain"
#: The measured trajectory of the chain (0-based, after thermalization): its Monte Carlo time.
TRAJECTORY = "trajectory"
#: Whether the update was accepted (bool); every sampler reports it.
ACCEPTED = "accepted"
#: The energy error of the update (0 for samplers without a Hamiltonian); every sampler reports it.
DELTA_H = "delta_H"
#: Columns of every run table that are not observables; no observable column may be named so.
RESERVED_COLUMNS = (CHAIN, TRAJECTORY, ACCEPTED, DELTA_H)


def records_table(records: Mapping[str, Sequence[torch.Tensor]], chains: range, n_trajectories: int) -> pd.DataFrame:
    """The table of ``chains`` (their ids) from ``records``: per column, ``n_trajectories`` tensors ``(n_chains,)``
    in update order. Rows are ordered by chain, then trajectory; columns ``chain``, ``trajectory``, then the
    records' in their order."""
    columns: dict[str, Any] = {
        CHAIN: np.repeat(np.arange(chains.start, chains.stop), n_trajectories),
        TRAJECTORY: np.tile(np.arange(n_trajectories), len(chains)),
    }
    for key, values in records.items():
        # (n_traj, n_chains) -> chain-major rows
        columns[key] = torch.stack(list(values)).T.reshape(-1).cpu().numpy()
    return pd.DataFrame(columns)

"""Running on several processes with ``torch.distributed`` (launched by ``torchrun``, Slurm, ...).

A single process never needs anything here: every function answers as for a world of one rank
when no process group is initialised. Under a launcher that sets ``WORLD_SIZE`` (``torchrun``
does, and so does ``srun`` with the environment of docs/distributed.md),
:func:`init_from_environment` joins the process group, with the ``nccl`` backend on GPUs and
``gloo`` on CPUs unless told otherwise.

What the rest of the package does with it:

- training (:func:`lattice_flows.training.train_flow`): the flow is wrapped in
  ``DistributedDataParallel``; each rank draws its own prior batch from :func:`rank_seed`, so the
  global batch is the sum of the ranks' batches; the loss and ESS recorded are the global ones;
- sampling (:meth:`lattice_flows.simulation.Simulation.run`): the spec's ``n_chains`` are split
  over the ranks (:func:`chain_range`), each rank runs its own with its own seed, and the tables
  are gathered into the one table a single process would give (chain ids ``0 .. n_chains - 1``);
- files: only rank 0 writes (checkpoints, tables, figures); every rank reads them to resume.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_from_environment",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "rank_seed",
    "chain_range",
    "all_gather_objects",
    "all_gather_tensor",
    "mean_over_ranks",
    "any_rank",
    "local_device",
]

#: Seeds of rank r are ``seed + r * RANK_SEED_STRIDE``: rank 0 draws what a single process draws.
RANK_SEED_STRIDE = 1 << 32

BACKENDS = ("nccl", "gloo")


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group that the launcher's environment describes; whether there is one.

    Nothing happens (and ``False`` is returned) without ``WORLD_SIZE`` or with ``WORLD_SIZE=1``.
    ``backend``: ``"nccl"`` or ``"gloo"``; default ``nccl`` where CUDA is available, else ``gloo``.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in BACKENDS:
        raise ValueError(f"distributed backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "nccl" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def rank_seed(seed: int, r: int | None = None) -> int:
    """The seed of rank ``r`` (default: this rank) for a run seeded ``seed``; rank 0 keeps ``seed``."""
    return seed + (rank() if r is None else r) * RANK_SEED_STRIDE


def chain_range(n_chains: int, r: int | None = None, size: int | None = None) -> range:
    """The chain ids rank ``r`` runs: ``n_chains`` split into contiguous, nearly equal blocks.

    >>> [chain_range(10, r, size=3) for r in range(3)]
    [range(0, 4), range(4, 7), range(7, 10)]
    """
    r = rank() if r is None else r
    size = world_size() if size is None else size
    if n_chains < size:
        raise ValueError(f"n_chains = {n_chains}: expected at least one chain per rank ({size} ranks)")
    base, extra = divmod(n_chains, size)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; for tables and small states)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors (same shape on every rank) concatenated along dimension 0, on every rank."""
    if not is_distributed():
        return t
    local = t.to(_collective_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(t.device)


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The average of ``t`` over the ranks (every rank gets it)."""
    if not is_distributed():
        return t
    total = t.to(_collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / world_size()).to(t.device)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on some rank (so that all ranks stop together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local_device(device: torch.device) -> torch.device:
    """``device`` made rank-local: under several ranks, ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device

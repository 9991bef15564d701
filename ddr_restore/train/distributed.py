"""Distributed helpers for ``torchrun`` (env://): gloo on CPU, nccl on CUDA; rank-aware utilities.

``torchrun --nproc_per_node=N train.py -opt X.yml --launcher pytorch`` sets RANK / LOCAL_RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT; this module reads them (no ``--local-rank`` argument is needed or parsed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "get_dist_info", "barrier", "all_reduce_sum", "all_gather_object",
           "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """Process placement: global rank, local rank, world size, and the device this process trains on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes checkpoints)."""
        return self.rank == 0


def _want_cuda(num_gpu: Any) -> bool:
    if num_gpu == 0:
        return False
    return torch.cuda.is_available()


def init_distributed(launcher: str = "none", num_gpu: Any = "auto", backend: Optional[str] = None) -> DistInfo:
    """Set up the process group for ``launcher='pytorch'`` (torchrun) or describe the single process.

    Args:
        launcher: ``"none"`` (one process) or ``"pytorch"`` (torchrun environment variables).
        num_gpu: option ``num_gpu``: ``0`` forces CPU, ``"auto"``/N uses CUDA when available.
        backend: override the backend (default: nccl with CUDA, gloo on CPU).
    """
    use_cuda = _want_cuda(num_gpu)
    if launcher == "none":
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        return DistInfo(device=device)
    if launcher != "pytorch":
        raise ValueError(f"--launcher: unknown launcher {launcher!r}; use 'none' or 'pytorch' (torchrun)")
    missing = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"--launcher pytorch: environment variables {', '.join(missing)} are not set; start with "
            "`torchrun --nproc_per_node=N train.py -opt ... --launcher pytorch`"
        )
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if use_cuda:
        torch.cuda.set_device(local_rank)  # LOCAL_RANK, not RANK % gpus: right on multi-node with uneven GPUs
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"), init_method="env://")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def get_dist_info() -> DistInfo:
    """Placement of the current process from the initialised process group (rank 0 of 1 when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                        world_size=dist.get_world_size())
    return DistInfo()


def barrier() -> None:
    """Synchronise all ranks (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a list of floats over ranks (float64); identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_object(obj: Any) -> List[Any]:
    """Gather a picklable object from every rank (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        # All ranks reach this point before any tears its group down: destroying a gloo group while a peer is
        # still using it aborts that peer ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()

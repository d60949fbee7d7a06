"""Distributed training through ``torchrun``: process group, ranks, gathers.

``torchrun --nproc_per_node N -m lemon_training.cli fit CONFIG`` starts N
processes with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set; one process
without them is an ordinary single-process run. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str) -> tuple[int, int, str]:
    """Join the process group when launched by torchrun.

    Returns
    -------
    (rank, world_size, device), the device pinned to the local GPU on CUDA
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        return rank(), world_size(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


@torch.no_grad()
def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (b, ...) of every process along dim 0, without gradient.

    Every process must pass the same ``b``. Single-process: ``x`` itself.
    """
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over processes, in place (no gradient)."""
    if world_size() > 1:
        with torch.no_grad():
            dist.all_reduce(x)
            x /= world_size()
    return x

"""Data-parallel runs on ``torch.distributed``: which share of the work is this process's, and meeting points.

Under ``torchrun --nproc_per_node N -m lens_pivotal ...`` the command line calls :func:`init_from_environment`,
which starts the process group (NCCL when CUDA is available, else gloo) and gives each process the GPU
``LOCAL_RANK`` names. In Python, initialise the group yourself (``torch.distributed.init_process_group``) and
call :func:`lens_pivotal.cache_resid_post` / :func:`lens_pivotal.search_pivotal_tokens` on every rank: work is
split by :func:`shard`, and rank 0 writes what all ranks share.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items: every ``world_size``-th one, starting at its rank (all of them without a group)."""
    rank, size = world()
    return list(items[rank::size])


def barrier() -> None:
    """Wait for every rank (nothing without a group)."""
    if world()[1] > 1:
        dist.barrier()


def on_rank_zero(action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 only; every rank raises if it failed there, so no rank waits forever.

    Returns ``action()``'s result on rank 0 and ``None`` elsewhere.
    """
    rank, size = world()
    result, failure = None, None
    if rank == 0:
        try:
            result = action()
        except Exception as error:  # re-raised below, on rank 0 as itself
            failure = error
    if size > 1:
        message = [None if failure is None else f"{type(failure).__name__}: {failure}"]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and rank != 0:
            raise RuntimeError(f"rank 0 failed: {message[0]}")
    if failure is not None:
        raise failure
    return result


def init_from_environment() -> torch.device | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment); the device to use.

    Returns ``cuda:LOCAL_RANK`` under CUDA (one GPU per process), the CPU otherwise, and ``None`` when not
    launched by ``torchrun`` (nothing is initialised then).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def leave_process_group() -> None:
    """Destroy the process group :func:`init_from_environment` started (nothing if there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

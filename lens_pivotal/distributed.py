"""Data-parallel runs on ``torch.distributed``: which share of the work is this process's, and meeting points.

Under ``torchrun --nproc_per_node N -m lens_pivotal ...`` the command line calls :func:`init_from_environment`,
which starts the process group (NCCL when CUDA is available, else gloo) and gives each process the GPU
``LOCAL_RANK`` names. In Python, initialise the group yourself (``torch.distributed.init_process_group``) and
call :func:`lens_pivotal.cache_resid_post` / :func:`lens_pivotal.search_pivotal_tokens` on every rank: work is
split by :func:`shard`, and rank 0 writes what all ranks share.

Every rank's own work runs between meeting points that every rank reaches whether its work succeeded or not
(:func:`all_ranks`): a failure on any rank is raised on every rank at the next one, naming the rank and its error,
instead of leaving the others waiting until the process group times out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
R = TypeVar("R")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items: every ``world_size``-th one, starting at its rank (all of them without a group)."""
    rank, size = world()
    return list(items[rank::size])


def all_ranks(action: Callable[[], T]) -> T:
    """Run ``action`` here, then meet every rank: if it failed on any rank, every rank raises.

    The failing rank raises its own exception; the others a ``RuntimeError`` naming each failing rank and its error
    (``"rank 1 failed: ValueError: ..."``). Returns ``action()``'s result. Without a group it is just ``action()``.
    """
    rank, size = world()
    result, failure = None, None
    try:
        result = action()
    except Exception as error:  # re-raised below, on this rank as itself
        failure = error
    if size > 1:
        errors: list[str | None] = [None] * size
        dist.all_gather_object(errors, None if failure is None else f"{type(failure).__name__}: {failure}")
        failed = [f"rank {other} failed: {error}" for other, error in enumerate(errors) if error is not None]
        if failed and failure is None:
            raise RuntimeError("; ".join(failed))
    if failure is not None:
        raise failure
    return result


def on_rank_zero(action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 only, then meet every rank (:func:`all_ranks`): every rank raises if it failed there.

    Returns ``action()``'s result on rank 0 and ``None`` elsewhere.
    """
    return all_ranks(lambda: action() if world()[0] == 0 else None)


def map_in_step(work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``work`` on each of this rank's :func:`shard` of ``items``, the ranks meeting (:func:`all_ranks`) after every
    item, so a failure on one rank stops every rank at the end of the item in progress; a rank with fewer items (one
    less at most) still meets. Returns this rank's results, in order."""
    mine, rounds = shard(items), math.ceil(len(items) / world()[1])
    results: list[R] = []
    for step in range(rounds):
        results += all_ranks(lambda: [work(item) for item in mine[step : step + 1]])
    return results


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

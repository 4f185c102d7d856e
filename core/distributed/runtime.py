"""Process-group set-up for torchrun, or for a single process run without it.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_process_group`
reads them (env://). Without them one process forms a world of one, so the same training code
runs with or without torchrun. NCCL when CUDA is available (one GPU per local rank), else gloo.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout: timedelta | None = None) -> Runtime:
    """Join the torchrun job (or form a world of one) and pick this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    device_id = device if device.type == "cuda" else None
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timeout, device_id=device_id)
    else:
        dist.init_process_group(backend, timeout=timeout, device_id=device_id,
                                store=dist.HashStore(), rank=0, world_size=1)
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


def shutdown(wait_for_peers: bool = True) -> None:
    """Leave the process group (a no-op when none was formed).

    wait_for_peers: meet the other ranks at a barrier first (a clean exit). A failing rank must
    not: its peers are blocked in a collective it will never join, so the barrier would hang the
    whole job until the group's timeout (30 minutes by default) instead of letting this process
    exit, after which torchrun stops the others.
    """
    if dist.is_initialized():
        if wait_for_peers and dist.get_world_size() > 1:
            # Tearing gloo down while a peer is still finishing can abort that peer.
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def distributed(timeout: timedelta | None = None) -> Iterator[Runtime]:
    """`init_distributed()` for the duration of a `with` block, then `shutdown()`; on an error,
    leave the group at once (no barrier) and re-raise it."""
    runtime = init_distributed(timeout)
    try:
        yield runtime
    except BaseException:
        shutdown(wait_for_peers=False)
        raise
    shutdown()

"""One training process of one attempt (rank, world, attempt) and its collectives.

Where a training process runs and which attempt it belongs to, with the few collectives the
trainer's parts need (all tensors on the process's device, so they work with gloo and NCCL).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class RunContext:
    """One training process of one attempt."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    attempt: int = 1
    job: str = "job"
    uid: str | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    @property
    def leader(self) -> bool:
        """Rank 0: the one that commits checkpoints and writes progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank (one tiny all-reduce)."""
        if self.world == 1:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum `values` (on this process's device) over every rank, in place."""
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def share(self, value: object) -> object:
        """Rank 0's `value` on every rank (a picklable object; for small results such as evaluation scores)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def init_distributed_single_process() -> None:
    """A one-process group for running the Trainer without Ray or torchrun (tests, benchmarks)."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))

"""This process's place among torchrun ranks: rank, world size, the device, a process group when needed.

Used by training (data parallel and FSDP, :mod:`beagle.training.distributed`) and by data regeneration
(:mod:`beagle.data.regenerate`), which shards prompts over ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    """This process's place among the ranks (one rank, no process group, when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False  # a process group exists (torchrun), even with one rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place; returns the tensor)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_distributed(device: str | None, process_group: bool = False) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (env RANK / WORLD_SIZE); pick the device.

    A process group is created when there is more than one rank, or with ``process_group=True``
    (FSDP needs one even on a single rank).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if world_size <= 1 and not (process_group and launched_by_torchrun()):
        return Distributed(), torch.device(device or ("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank, world_size, local_rank, initialized=True), chosen

"""Process-group setup and the samplers, for plain ``python`` and ``torchrun`` alike.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the group uses
``nccl`` on CUDA and ``gloo`` on CPU. Without them the run is a world of one and nothing is initialised.

The training sampler follows ``torch.utils.data.DistributedSampler``: each epoch a permutation seeded
with ``seed + epoch``, rank r taking positions r, r+W, r+2W, …. With a per-rank batch b, the W batches
number k of all ranks together are exactly positions [k·b·W, (k+1)·b·W) of the permutation, i.e. the
batch k of a single-process run with batch b·W: a distributed run sees the same global batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over all ranks (a copy; ``t`` itself is unchanged)."""
    t = t.detach().clone()
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t, info).item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class TrainSampler(torch.utils.data.Sampler[int]):
    """``DistributedSampler`` order (shuffled, dropping the tail) that can start mid-epoch.

    ``set_epoch(e)`` selects the permutation; ``skip_batches(k)`` makes the next iteration start at
    this rank's batch k (resume after a checkpoint written inside an epoch).
    """

    def __init__(self, n: int, batch_per_rank: int, info: DistInfo, seed: int, shuffle: bool = True) -> None:
        self.n, self.b, self.info, self.seed, self.shuffle = n, batch_per_rank, info, seed, shuffle
        self.epoch, self.skip = 0, 0
        self.batches = max(1, n // (batch_per_rank * info.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, k: int) -> None:
        self.skip = k

    def __len__(self) -> int:
        return (self.batches - self.skip) * self.b

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if len(order) < self.batches * self.b * self.info.world_size:  # tiny data: repeat (one batch)
            order = order.repeat(-(-self.batches * self.b * self.info.world_size // len(order)))
        mine = order[self.info.rank :: self.info.world_size][: self.batches * self.b]
        start, self.skip = self.skip * self.b, 0  # skipping applies to one iteration only
        return iter(mine[start:].tolist())


class EvalSampler(torch.utils.data.Sampler[int]):
    """Every index exactly once across ranks (rank r takes r, r+W, …): exact distributed metrics."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, n, info.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

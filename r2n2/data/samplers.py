"""Samplers whose order depends only on (seed, epoch, rank), so a resumed run sees the same batches
as an uninterrupted one, and evaluation splits are shared across processes without padding."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffled indices for training: a permutation drawn from ``(seed, epoch)``; with several
    processes each rank takes every ``world_size``-th index, all ranks the same count (the last
    ``n % world_size`` of the permutation are dropped so DDP ranks never wait on each other).

    ``loader_generator`` seeds the DataLoader's workers; it too is reset from ``(seed, epoch)``.
    Lightning calls ``set_epoch`` before every training epoch.
    """

    def __init__(self, length: int, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.loader_generator = torch.Generator()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.loader_generator.manual_seed(self._seed())

    def _seed(self) -> int:
        return (self.seed * 1_000_003 + self.epoch) % (2**63)

    def __len__(self) -> int:
        return self.length // self.world_size

    def __iter__(self):
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self._seed()))
        return iter(order[self.rank : len(self) * self.world_size : self.world_size].tolist())


class ShardSampler(Sampler[int]):
    """Evaluation: indices ``rank, rank + world_size, ...`` in order, without padding, so every
    sample is seen exactly once across processes and metrics equal a one-process run."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

"""Samplers whose order depends only on (seed, epoch, rank), so a resumed run sees the same batches
as an uninterrupted one, and evaluation splits are shared across processes without padding.

Training batches come from :class:`EpochBatchSampler`, which also draws every random number a batch
needs (its view count, the seed of its view choice and augmentation) from (seed, epoch, rank, batch
index) in the main process: worker processes hold no random state, so any ``num_workers``,
persistent or not, gives the same batches.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What a training batch asks the dataset for: sample ``index`` with ``views`` views, its extra
    views chosen by ``seed`` (the batch's seed, also used for its augmentation)."""

    index: int
    views: int
    seed: int


class EpochShuffleSampler(Sampler[int]):
    """Shuffled indices for training: a permutation drawn from ``(seed, epoch)``; with several
    processes each rank takes every ``world_size``-th index, all ranks the same count (the last
    ``n % world_size`` of the permutation are dropped so DDP ranks never wait on each other).

    Lightning calls ``set_epoch`` before every training epoch.
    """

    def __init__(self, length: int, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _seed(self) -> int:
        return (self.seed * 1_000_003 + self.epoch) % (2**63)

    def __len__(self) -> int:
        return self.length // self.world_size

    def __iter__(self):
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self._seed()))
        return iter(order[self.rank : len(self) * self.world_size : self.world_size].tolist())


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """Training batches of :class:`SampleKey`: the indices of ``sampler`` (an
    :class:`EpochShuffleSampler`) in chunks of ``batch_size``; batch ``b`` of epoch ``e`` gets a view
    count k uniform in ``views = (lo, hi)`` (3D-R2N2 draws 1..5 per batch) and a 63-bit seed, both
    from ``numpy.random.default_rng([seed, e, rank, b])``.

    Lightning's ``set_epoch`` reaches ``self.sampler`` (it looks for ``batch_sampler.sampler``).
    """

    def __init__(
        self, sampler: EpochShuffleSampler, batch_size: int, views: tuple[int, int] = (1, 1), drop_last: bool = True
    ):
        self.sampler, self.batch_size, self.drop_last = sampler, int(batch_size), drop_last
        self.views = (int(views[0]), int(views[1]))

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_draw(self, b: int) -> tuple[int, int]:
        """(views, seed) of batch ``b`` in the current epoch."""
        s = self.sampler
        rng = np.random.default_rng([s.seed, s.epoch, s.rank, b])
        k = int(rng.integers(self.views[0], self.views[1] + 1))
        return k, int(rng.integers(2**63 - 1))

    def __iter__(self):
        order = list(self.sampler)
        for b in range(len(self)):
            k, seed = self.batch_draw(b)
            yield [SampleKey(i, k, seed) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


class ShardSampler(Sampler[int]):
    """Evaluation: indices ``rank, rank + world_size, ...`` in order, without padding, so every
    sample is seen exactly once across processes and metrics equal a one-process run."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

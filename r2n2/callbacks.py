"""Lightning callbacks of ours: per-epoch reseeding (exact resume) and training throughput."""

from __future__ import annotations

import random
import time

import lightning as L
import numpy as np
import torch


class EpochSeed(L.Callback):
    """Reseed Python, NumPy and torch at the start of every training epoch from (seed, epoch, rank).

    Random state inside an epoch (dropout masks, augmentation in the main process, the workers'
    seeds) then depends only on the epoch, not on what ran before it, so a run resumed from a
    checkpoint at an epoch boundary continues with the same random numbers as an uninterrupted run.
    (Lightning's data-loader iterator and sanity-check validation consume random numbers at
    different moments in the two cases; reseeding makes that irrelevant.)
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = (self.seed * 1_000_003 + trainer.current_epoch * 1_009 + trainer.global_rank) % (2**32)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class TrainThroughput(L.Callback):
    """Training samples per second, counting the time from one training batch's end to the next
    (data loading included, validation excluded), summed over processes."""

    def __init__(self):
        self.samples, self.seconds, self._last = 0, 0.0, None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.samples += len(batch["voxels"]) * trainer.world_size
        self._last = now

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")

"""Lightning callbacks of ours: per-epoch reseeding (exact resume), checkpoints that follow a moved
run folder, training throughput, and a stop on a non-finite loss."""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


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


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, which also restores its record (best score, best and last paths)
    when the run folder was moved or copied before ``resume=``.

    Lightning keeps that record only if the checkpoint's ``dirpath`` equals the current one; otherwise
    it warns and forgets the best score, so the first resumed epoch would overwrite best.ckpt whatever
    its val IoU. When the checkpoint being resumed lies in this callback's own folder, the run is the
    same one in a new place: its stored paths are moved along (old dirpath -> this dirpath). A
    checkpoint from elsewhere (``ckpt_path=`` starting a new run) keeps Lightning's behaviour.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        old, new = (state or {}).get("dirpath"), self.dirpath
        if not old or not new or old == new or not trainer.ckpt_path:
            return
        if Path(trainer.ckpt_path).resolve().parent != Path(new).resolve():
            return

        def moved(path: str) -> str:
            return str(Path(new) / Path(path).relative_to(old)) if path and Path(path).is_relative_to(old) else path

        log.info("%s: the run folder moved from %s; its checkpoint record follows it", self.state_key, old)
        state.update(
            dirpath=new,
            best_model_path=moved(state.get("best_model_path", "")),
            kth_best_model_path=moved(state.get("kth_best_model_path", "")),
            last_model_path=moved(state.get("last_model_path", "")),
            best_k_models={moved(k): v for k, v in (state.get("best_k_models") or {}).items()},
        )


class TrainThroughput(L.Callback):
    """Training samples per second, counting the time from one training batch's end to the next
    (data loading included, validation excluded), summed over processes: over the whole run and per
    epoch (logged at each epoch's end, so that an epoch slower than the first, e.g. one
    that re-creates its workers, shows). Also each epoch's wall time from its start to its end, validation included
    (``epoch_seconds``: what a run of N epochs costs)."""

    def __init__(self):
        self.samples, self.seconds, self._last = 0, 0.0, None
        self.by_epoch: list[float] = []  # samples/s of each training epoch this process ran
        self.epoch_seconds: list[float] = []  # wall seconds of each epoch, validation included
        self._epoch_samples, self._epoch_seconds, self._epoch_start = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = self._epoch_start = time.perf_counter()
        self._epoch_samples, self._epoch_seconds = 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            n = len(batch["voxels"]) * trainer.world_size
            self.seconds += now - self._last
            self.samples += n
            self._epoch_seconds += now - self._last
            self._epoch_samples += n
        self._last = now

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_seconds:
            self.by_epoch.append(self._epoch_samples / self._epoch_seconds)
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
            if trainer.is_global_zero:
                log.info(
                    "epoch %d: %.1f training samples/s, %.1f s in all (validation included)",
                    trainer.current_epoch,
                    self.by_epoch[-1],
                    self.epoch_seconds[-1],
                )

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; ``str()`` names the step and the batch's samples."""


class NonFiniteLoss(L.Callback):
    """Stop training with :class:`NonFiniteLossError` when a training loss is not finite, naming the
    optimiser step and the object ids of that batch, before any checkpoint holds weights updated by it.

    No host-device synchronisation per step: each step's "not finite" flag is copied to pinned host
    memory without blocking, with a CUDA event behind it, and read once the event has completed (a
    few steps later). Before any checkpoint is written, and at the end of every training epoch, the
    pending flags are waited for, so the last checkpoint is always one of finite weights and resuming
    from it works. On the CPU the flag is read at once.
    """

    def __init__(self):
        self.pending: deque = deque()  # (step, object ids, host flag, CUDA event or None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        flag = ~torch.isfinite(loss.detach())
        event = None
        if flag.is_cuda:
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flag = host
        # the step this loss was computed at (global_step already counts its optimiser step)
        self.pending.append((trainer.global_step - 1, list(batch.get("object_id", [])), flag, event))
        self.check(wait=False)

    def check(self, wait: bool = True) -> None:
        """Read every flag whose copy has completed (all of them if ``wait``); raise on the first set."""
        while self.pending:
            step, ids, flag, event = self.pending[0]
            if event is not None and not event.query():
                if not wait:
                    return
                event.synchronize()
            self.pending.popleft()
            if bool(flag):
                self.pending.clear()
                shown = ", ".join(ids[:16]) + (f", ... ({len(ids)} in all)" if len(ids) > 16 else "")
                raise NonFiniteLossError(
                    f"training loss is not finite at step {step} (batch of {len(ids)}: {shown}); "
                    "no checkpoint was written after it: resume=<run> continues from the last good one"
                )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()

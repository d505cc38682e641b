"""``ReconstructionModule``: the LightningModule that trains any network mapping views to voxel logits.

Loss: BCE on logits (equal to BCE after the sigmoid, and safe under mixed precision). Metrics:
``VoxelIoU`` at 0.3 (the seed report) for train/val/test, and val IoU at 0.2/0.3/0.4/0.5 and per
category. Everything in ``hparams`` is a plain container, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torchmetrics import MeanMetric

from r2n2.evaluation.metrics import THRESHOLD, VoxelIoU, voxel_iou_from_logits
from r2n2.models import count_parameters
from r2n2.train.callbacks import NonFiniteLoss
from r2n2.train.losses import voxel_loss
from r2n2.train.network import build_network, compile_network, use_channels_last
from r2n2.train.reconstructions import ReconstructionFigures
from r2n2.train.step import WholeStep

log = logging.getLogger(__name__)

# Pix2Vox reports IoU at these thresholds; the seed report at 0.3
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


def _present(metrics: dict, prefix: str) -> dict:
    """Prefix the keys, dropping categories with no samples in this split (their IoU is NaN)."""
    return {prefix + k: v for k, v in metrics.items() if not torch.isnan(v)}


def _zero_sums() -> dict:
    """The training epoch's running sums: IoU@0.3 and loss x samples (tensors once added to), samples."""
    return {"iou": 0.0, "loss": 0.0, "count": 0}


class ReconstructionModule(L.LightningModule):
    """Wraps a network ``images: (B, V, 3, 127, 127) -> logits: (B, R, R, R)``.

    net: network config, e.g. ``{"_target_": "r2n2.models.SeedModel", "hidden_size": 128}``.
    optimizer: optimizer config with ``_partial_: true`` (e.g. Adam lr 1e-3, weight decay 1e-4).
    scheduler: LR scheduler config with ``_partial_: true`` (e.g. MultiStepLR) or None; its ``interval``
        key ("epoch", the default, or "step") says whether milestones count epochs or optimiser steps.
    viz_every_n_epochs, viz_samples: Figure 2 (input, ground truth and prediction of ``viz_samples``
        validation samples of several categories) every N epochs (0 = never), to TensorBoard and as
        ``<run>/reconstructions/epoch_NNN.png`` (``r2n2.train.reconstructions``).
    data: the data config it was trained with (kept in the checkpoint so ``r2n2-eval`` can rebuild
        the same splits; not used here).
    compile: False, True or a ``torch.compile`` mode ("reduce-overhead" = with CUDA graphs): see
        ``compile_network`` (in place: checkpoint keys do not change).
    cuda_graph: the whole training step (forward, loss, backward, clipping, optimiser step) by hand,
        replayed as one CUDA graph per input shape on a GPU (``r2n2.train.step.WholeStep``; eager elsewhere).
    gradient_clip_val: the gradient norm ``cuda_graph``'s step clips to (``r2n2.train.run.build`` moves
        ``trainer.gradient_clip_val`` here: Lightning clips only in its automatic optimisation).
    channels_last: channels-last memory format for the 2D convolutions: True, False, or "auto" (on a
        CUDA GPU only, where cuDNN's channels-last kernels are the fast ones).
    loss: kwargs of ``r2n2.train.losses.voxel_loss``, e.g. ``{"soft_iou_weight": 1.0}``; None = plain BCE.
    A scheduler config with ``total_steps: auto`` (conf/scheduler/onecycle.yaml, cosine.yaml) gets the
    run's optimiser steps (Lightning's ``estimated_stepping_batches``); a run resumed with more epochs
    or steps (``resume=<run> trainer.max_epochs=N``) has its schedule re-spread over the new length from
    the step it had reached (``_fit_schedule_to_run``).

    The training step makes no host-device synchronisation: the step loss reaches the progress bar
    only on the CPU (on a GPU it is logged every ``log_every_n_steps`` and per epoch), the training IoU
    is summed on the device, and the non-finite-loss check (``r2n2.train.callbacks.NonFiniteLoss``) reads
    its flag asynchronously.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        viz_every_n_epochs: int = 1,
        viz_samples: int = 4,
        data: dict | None = None,
        compile: bool | str = False,
        channels_last: bool | str = "auto",
        loss: dict | None = None,
        cuda_graph: bool = False,
        gradient_clip_val: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_network(net)
        # the whole step is the module's own (r2n2.train.step.WholeStep), replayed as CUDA graphs on a GPU
        self.automatic_optimization = not cuda_graph
        self._whole_step: WholeStep | None = None
        # the epoch's training IoU@0.3 and loss x samples, summed on the device (VoxelIoU.update
        # validates and counts on the host); not buffers, which DDP would overwrite with rank 0's
        self._train_sums = _zero_sums()
        self.test_iou = VoxelIoU(THRESHOLD)
        self.val_iou = VoxelIoU(THRESHOLDS)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.categories: list[str] = []

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def setup(self, stage: str) -> None:
        """Per-category metrics need the datamodule's category list; memory format and compilation
        depend on the device the trainer chose."""
        # moving to the GPU afterwards keeps the memory format
        use_channels_last(self.net, self.hparams.channels_last, isinstance(self.trainer.accelerator, CUDAAccelerator))
        if not getattr(self, "_compiled", False):
            self._compiled = compile_network(self.net, self.hparams.compile)
        if self.hparams.cuda_graph and stage == "fit":
            self._check_cuda_graph()
        dm = getattr(self.trainer, "datamodule", None)
        cats = list(getattr(dm, "categories", []) or [])
        if cats and cats != self.categories:
            self.categories = cats
            self.val_cat_iou = VoxelIoU(THRESHOLD, categories=cats)
            self.test_cat_iou = VoxelIoU(THRESHOLD, categories=cats)

    def _check_cuda_graph(self) -> None:
        """Refuse what a captured step cannot hold; say where it runs eagerly instead."""
        trainer = self.trainer
        if trainer.world_size > 1:
            raise ValueError(
                f"module.cuda_graph=true runs on one device; this run has {trainer.world_size} processes "
                "(DDP's gradient all-reduce is not captured here): use module.cuda_graph=false"
            )
        if "16-mixed" == str(trainer.precision):
            raise ValueError(
                "module.cuda_graph=true with trainer.precision=16-mixed: fp16's gradient scaler reads the "
                "gradients on the host every step, which a CUDA graph cannot; use bf16-mixed or 32"
            )
        if self.hparams.compile in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"module.cuda_graph=true with module.compile={self.hparams.compile}: that mode captures "
                "CUDA graphs of its own inside the step's graph; use module.compile=true (or false)"
            )
        if not isinstance(trainer.accelerator, CUDAAccelerator):
            log.warning(
                "module.cuda_graph=true: no CUDA device (%s), so the whole step runs eagerly, uncaptured",
                type(trainer.accelerator).__name__,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, V, 3, 127, 127) float -> logits: (B, R, R, R) float."""
        return self.net(images)

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of a batch."""
        logits = self(batch["images"])
        return voxel_loss(logits, batch["voxels"], **(self.hparams.loss or {})), logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            loss, logits = self._step(batch)
        else:
            loss, logits = self._manual_step(batch)
        n = len(logits)
        sums = self._train_sums  # a plain dict: a Module attribute set costs ~5 us a step each
        sums["iou"] = voxel_iou_from_logits(logits.detach(), batch["voxels"]).sum() + sums["iou"]
        sums["loss"] = loss.detach() * n + sums["loss"]
        sums["count"] += n
        # the step loss only on the steps the loggers write (self.log costs ~1.5 ms a step on a CPU;
        # private: Lightning's own test of log_every_n_steps); on the progress bar on the CPU only, as
        # reading it every step would sync the host with a GPU
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss_step", loss, prog_bar=self.device.type == "cpu", on_step=True, on_epoch=False)
        return loss

    def _manual_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole step by hand (``cuda_graph``): as Lightning's automatic optimisation does it
        (zero_grad, forward, loss, backward, clipping, optimiser step, the schedule), captured and
        replayed on CUDA."""
        optimizer = self.optimizers()
        if self._whole_step is None:
            loss_fn = functools.partial(voxel_loss, **(self.hparams.loss or {}))
            self._whole_step = WholeStep(
                self.net,
                loss_fn,
                optimizer.optimizer,
                self.hparams.gradient_clip_val,
                capture=self.device.type == "cuda",
            )
        # Lightning's manual loop counts optimiser steps (global_step) through these two hooks of its
        # optimiser wrapper; the step itself is the torch optimiser's, inside WholeStep
        optimizer._on_before_step()
        loss, logits = self._whole_step(batch["images"], batch["voxels"])
        optimizer._on_after_step()
        # as Lightning's automatic loop: step schedules every step, epoch ones after the epoch's last batch
        epoch_done = self.trainer.fit_loop.epoch_loop._num_ready_batches_reached()
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step" or epoch_done:
                config.scheduler.step()
        return loss, logits

    def on_train_epoch_end(self) -> None:
        # every rank sees the same number of samples (EpochShuffleSampler): the mean of rank means is the mean
        sums = self._train_sums
        count = max(sums["count"], 1)
        self.log("train/loss", sums["loss"] / count, sync_dist=True)
        self.log("train/iou", sums["iou"] / count, prog_bar=True, sync_dist=True)
        self._train_sums = _zero_sums()

    def configure_callbacks(self) -> list[L.Callback]:
        # once per trainer: trainer.test() after fit() asks again, and a second one would be logged
        # as overriding the first
        if any(isinstance(c, NonFiniteLoss) for c in self.trainer.callbacks):
            return []
        return [NonFiniteLoss(), ReconstructionFigures(self.hparams.viz_every_n_epochs, self.hparams.viz_samples)]

    def _eval_update(self, stage: str, batch: dict) -> None:
        """Accumulate ``stage`` ("val" or "test") loss (weighted by batch size), IoU, per-category IoU."""
        loss, logits = self._step(batch)
        probs = torch.sigmoid(logits.detach().float())
        getattr(self, f"{stage}_loss").update(loss, weight=len(batch["voxels"]))
        getattr(self, f"{stage}_iou").update(probs, batch["voxels"])
        if self.categories:
            getattr(self, f"{stage}_cat_iou").update(probs, batch["voxels"], batch["category_index"])

    def _eval_log(self, stage: str) -> None:
        """Log ``<stage>/loss``, ``<stage>/iou`` (at 0.3, on the progress bar), ``<stage>/iou@t`` and per
        category (categories without samples left out), then reset the metrics."""
        ious = getattr(self, f"{stage}_iou").compute()
        metrics = {f"{stage}/loss": getattr(self, f"{stage}_loss").compute()}
        metrics.update({f"{stage}/{k}": v for k, v in ious.items()})
        if self.categories:
            metrics.update(_present(getattr(self, f"{stage}_cat_iou").compute(), f"{stage}/"))
            getattr(self, f"{stage}_cat_iou").reset()
        self.log(f"{stage}/iou", ious[VoxelIoU.key(THRESHOLD)], prog_bar=True)
        self.log_dict(metrics)
        getattr(self, f"{stage}_loss").reset()
        getattr(self, f"{stage}_iou").reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_update("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_log("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_update("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_log("test")

    def configure_optimizers(self) -> Any:
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        cfg = dict(self.hparams.scheduler)
        interval = cfg.pop("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler.interval must be 'epoch' or 'step', got {interval!r}")
        if cfg.get("total_steps") == "auto":
            cfg["total_steps"] = self._run_steps()
        scheduler = hydra.utils.instantiate(cfg)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def _run_steps(self) -> int:
        """The run's optimiser steps, for a schedule spread over the whole run (``total_steps: auto``).

        Lightning's estimate builds the training loader before a resumed run's checkpoint is restored,
        and such a loader would draw epoch 0's batches: one built here is dropped, to be rebuilt later."""
        fit_loop = self.trainer.fit_loop
        built_here = self.trainer.train_dataloader is None
        steps = self.trainer.estimated_stepping_batches
        if built_here:
            fit_loop._combined_loader = None  # (private: Lightning has no public way to drop it)
        if steps == float("inf"):
            raise ValueError(
                f"scheduler={self.hparams.scheduler.get('_target_', '?').rsplit('.', 1)[-1]} with "
                "total_steps: auto spreads over the run's optimiser steps, but trainer.max_epochs=-1 and "
                "trainer.max_steps=-1 leave them unbounded: set one of them (a time budget, "
                "trainer.max_time, stops a run but does not size it), or use scheduler=multistep|none"
            )
        return int(steps)

    def on_train_start(self) -> None:
        self._fit_schedule_to_run()

    def _fit_schedule_to_run(self) -> None:
        """Re-spread a ``total_steps: auto`` schedule restored from a checkpoint over this run's length.

        The scheduler state in a checkpoint holds the length of the run that wrote it; resumed with a
        larger trainer.max_epochs / max_steps, OneCycleLR would stop with "Tried to step N times" at the
        old end. The schedule is rebuilt for the new length at the step it had reached (its learning
        rate moves to the new curve's value there)."""
        cfg = dict(self.hparams.scheduler or {})
        interval = cfg.pop("interval", "epoch")
        if cfg.get("total_steps") != "auto" or not self.trainer.lr_scheduler_configs:
            return
        config = self.trainer.lr_scheduler_configs[0]
        total, old = self._run_steps(), config.scheduler
        if getattr(old, "total_steps", total) == total:
            return
        cfg["total_steps"] = total
        # last_epoch = steps taken - 1: the constructor's own first step() lands on the step reached
        config.scheduler = hydra.utils.instantiate(cfg)(optimizer=old.optimizer, last_epoch=old.last_epoch - 1)
        log.info(
            "scheduler: re-spread over %d optimiser steps (was %d), at step %d; interval %s",
            total,
            old.total_steps,
            old.last_epoch,
            interval,
        )

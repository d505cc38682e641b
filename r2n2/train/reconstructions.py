"""Figure 2 of a run: input view, ground truth and prediction for a few validation samples of
different categories, every N epochs, to TensorBoard and ``<run>/reconstructions/epoch_NNN.png``."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

KEYS = ("images", "voxels", "category")


class ReconstructionFigures(L.Callback):
    """Draws the same ``samples`` validation samples every ``every_n_epochs`` epochs (0 = never).

    The samples are taken in the first validation epoch (not the sanity check), from batches spread
    evenly over the loader: the splits list the objects of a category together, so the first batch
    would show one object's views. Batches are those the module sees: ``images (B, V, 3, S, S)
    float``, ``voxels (B, R, R, R)``, ``category`` (names)."""

    def __init__(self, every_n_epochs: int = 1, samples: int = 4):
        self.every, self.samples = every_n_epochs, samples
        self.batch: dict | None = None  # the samples drawn: the KEYS of ``samples`` rows
        self._rows: list[dict] = []
        self._picks: dict[int, int] = {}  # batch index -> how many of its samples to take

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.batch is not None or trainer.sanity_checking or not self.every:
            return
        total = trainer.num_val_batches[0] if trainer.num_val_batches else 0
        batches = int(total) if total and math.isfinite(total) else 1
        chosen = sorted({i * batches // self.samples for i in range(self.samples)})
        per = -(-self.samples // len(chosen))
        self._picks = dict.fromkeys(chosen, per)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        take = self._picks.pop(batch_idx, 0) if dataloader_idx == 0 else 0
        if not take:
            return
        n = len(batch["voxels"])
        rows = torch.linspace(0, n - 1, min(take, n)).long().unique().tolist()
        for r in rows:
            self._rows.append({k: batch[k][r] for k in KEYS})

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.batch is None and self._rows:
            rows = self._rows[: self.samples]
            self.batch = {
                "images": torch.stack([r["images"] for r in rows]),
                "voxels": torch.stack([r["voxels"] for r in rows]),
                "category": [r["category"] for r in rows],
            }
            self._rows, self._picks = [], {}
        if self.batch is None or trainer.sanity_checking or pl_module.current_epoch % self.every:
            return
        if trainer.global_rank == 0:
            self._draw(trainer, pl_module)

    def _draw(self, trainer, pl_module) -> None:
        import matplotlib.pyplot as plt
        from lightning.pytorch.loggers import TensorBoardLogger

        from r2n2.vis.figures import denormalize, reconstruction_figure, save

        batch = self.batch
        with torch.no_grad():
            probs = torch.sigmoid(pl_module(batch["images"]).float())
        fig = reconstruction_figure(batch["images"][:, 0], batch["voxels"], probs, titles=batch["category"])
        # TensorBoard (found among any loggers) gets the figure; with or without it, a PNG in the run folder
        writer = next((lg.experiment for lg in pl_module.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is not None:
            writer.add_figure("val/reconstructions", fig, global_step=pl_module.global_step, close=False)
        if trainer.state.fn == "fit":  # a training run's epochs, into its folder (not r2n2-eval's validation)
            save(fig, Path(trainer.default_root_dir) / "reconstructions" / f"epoch_{pl_module.current_epoch:03d}.png")
        else:
            plt.close(fig)
        if writer is not None and pl_module.current_epoch == 0:
            writer.add_images("val/inputs", denormalize(batch["images"][:, 0]), global_step=pl_module.global_step)

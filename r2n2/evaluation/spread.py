"""How far apart a model's test predictions are: a callback that watches them (a forward hook on the
network while ``trainer.test`` runs) and adds three numbers to the metrics:

- ``test/pred_pairwise_iou``: mean IoU@0.3 between the thresholded predictions of different test
  samples (up to ``MAX_PAIRWISE`` of them, spread evenly over the split; two empty grids count as
  identical, IoU 1). Ground-truth shapes of different objects overlap far less (the synthetic set of
  32 objects per category, 416 objects: 0.125 over all pairs, 0.46 within a category, 0.86 within its
  most uniform category); a model that predicts one grid for every image scores 1.
- ``test/pred_voxel_std``: the per-voxel standard deviation of the predicted probabilities across
  test samples, averaged over the 32^3 voxels: 0 when every image gets the same probabilities.
- ``test/pred_occupied_fraction``: the share of voxels predicted occupied (1.0 = the full cube).

Under DDP each process sees its shard of the test split; the statistics are gathered at the end of
the test, so the numbers equal a one-process run's.
"""

from __future__ import annotations

import lightning as L
import torch

from r2n2.evaluation.metrics import THRESHOLD

MAX_PAIRWISE = 256  # samples kept for the pairwise IoU (a 256 x 256 matrix of 32^3 grids: ~8 MB of bits)


class PredictionSpread(L.Callback):
    """Collects statistics of the test predictions ``probs: (B, R, R, R)`` (see the module docstring).

    The pairwise IoU keeps at most ``MAX_PAIRWISE`` predictions spread evenly over the test split:
    every ``stride``-th sample (``stride = ceil(N / MAX_PAIRWISE)`` for N test samples), because splits
    list the views of an object and the objects of a category together: the first 256 samples would be
    a few objects of one category, whose predictions overlap far more than the split's."""

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self._hook = None
        self.reset()

    def reset(self, total: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        """Before a test of ``total`` samples (None: unknown, keep the first ``MAX_PAIRWISE``), seen by
        this process as samples ``rank, rank + world_size, ...`` (``ShardSampler``)."""
        self.stride = max(1, -(-total // MAX_PAIRWISE)) if total else 1
        self.rank, self.world_size = rank, world_size
        self.n, self.sum, self.sumsq, self.kept, self.kept_index = 0, None, None, [], []

    def on_test_start(self, trainer, pl_module) -> None:
        self.reset(self.test_samples(trainer), trainer.global_rank, trainer.world_size)
        self._hook = pl_module.net.register_forward_hook(
            lambda _m, _i, logits: self.update(torch.sigmoid(logits.float()))
        )

    @staticmethod
    def test_samples(trainer) -> int | None:
        """How many samples this test scores over all ranks: the split's, or fewer where
        ``trainer.limit_test_batches`` stops it early (``debug=limit``); None where unknown."""
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            return None
        total = len(dataset)
        batches, batch = trainer.num_test_batches, getattr(loader, "batch_size", None)
        if batches and batch and batches[0] != float("inf"):
            total = min(total, int(batches[0]) * batch * trainer.world_size)
        return total

    def on_test_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if trainer.world_size > 1:
            self._gather(trainer.strategy)

    def _gather(self, strategy) -> None:
        """Every rank's statistics on every rank, as one process would have them: each kept row
        travels with its index in the split, and the first ``MAX_PAIRWISE`` by index are kept."""
        dev = strategy.root_device
        size = int(
            strategy.reduce(torch.tensor(0 if self.sum is None else self.sum.numel(), device=dev), reduce_op="max")
        )
        zero = torch.zeros(size, dtype=torch.float64)
        sums = torch.stack([zero if self.sum is None else self.sum, zero if self.sumsq is None else self.sumsq])
        sums = strategy.reduce(sums.to(dev), reduce_op="sum").cpu()
        n = int(strategy.reduce(torch.tensor(self.n, device=dev), reduce_op="sum"))
        kept = torch.cat(self.kept) if self.kept else torch.zeros(0, size, dtype=torch.bool)
        rows = torch.zeros(MAX_PAIRWISE, size, dtype=torch.uint8)  # padded: all_gather needs equal shapes
        rows[: len(kept)] = kept
        index = torch.full((MAX_PAIRWISE,), -1, dtype=torch.long)  # -1: padding
        index[: len(kept)] = torch.tensor(self.kept_index, dtype=torch.long)
        every = strategy.all_gather(rows.to(dev)).cpu().bool().flatten(0, 1)  # (W * MAX_PAIRWISE, size)
        where = strategy.all_gather(index.to(dev)).cpu().flatten()  # (W * MAX_PAIRWISE,)
        order = [int(i) for i in where.argsort() if where[i] >= 0][:MAX_PAIRWISE]
        self.n, self.sum, self.sumsq = n, sums[0], sums[1]
        self.kept = [every[order]] if order else []
        self.kept_index = where[order].tolist()

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        p = probs.detach().double().flatten(1).cpu()
        index = self.rank + self.world_size * torch.arange(self.n, self.n + len(p))  # in the whole split
        self.sum = p.sum(0) if self.sum is None else self.sum + p.sum(0)
        self.sumsq = (p * p).sum(0) if self.sumsq is None else self.sumsq + (p * p).sum(0)
        self.n += len(p)
        pick = (index % self.stride == 0).nonzero().flatten()[: MAX_PAIRWISE - len(self.kept_index)]
        if len(pick):
            self.kept.append(p[pick] >= self.threshold)
            self.kept_index.extend(index[pick].tolist())

    def compute(self) -> dict:
        """The three ``test/pred_*`` numbers, or {} before any test prediction."""
        if not self.n:
            return {}
        mean = self.sum / self.n
        std = (self.sumsq / self.n - mean * mean).clamp_min(0).sqrt()
        occupied = torch.cat(self.kept).float()
        out = {"test/pred_voxel_std": float(std.mean()), "test/pred_occupied_fraction": float(occupied.mean())}
        if len(occupied) >= 2:
            inter = occupied @ occupied.T
            count = occupied.sum(1)
            union = count[:, None] + count[None, :] - inter
            iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
            off = ~torch.eye(len(occupied), dtype=torch.bool)
            out["test/pred_pairwise_iou"] = float(iou[off].mean())
        return out

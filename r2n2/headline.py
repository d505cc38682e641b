"""The run's honest headline: test IoU next to BOTH mean-shape baselines, and a warning when the model
is degenerate (below the image-free global mean shape, or predicting nearly the same grid for every
image, e.g. all 32,768 voxels occupied whatever the photo).

``PredictionSpread`` watches the test predictions (a forward hook on the network while
``trainer.test`` runs) and adds three numbers to the metrics:

- ``test/pred_pairwise_iou``: mean IoU@0.3 between the thresholded predictions of different test
  samples (the first ``MAX_PAIRWISE`` samples; two empty grids count as identical, IoU 1). Ground-truth
  shapes of different objects overlap far less (default synthetic set, 416 objects: 0.125 over all
  pairs, 0.46 within a category, 0.86 within its most uniform category); a model that predicts one
  grid for every image scores 1.
- ``test/pred_voxel_std``: the per-voxel standard deviation of the predicted probabilities across
  test samples, averaged over the 32^3 voxels: 0 when every image gets the same probabilities.
- ``test/pred_occupied_fraction``: the share of voxels predicted occupied (1.0 = the full cube).

Under DDP each process sees its shard of the test split; the statistics are gathered at the end of
the test, so the numbers equal a one-process run's.
"""

from __future__ import annotations

import lightning as L
import torch

from r2n2.metrics import THRESHOLD

MAX_PAIRWISE = 256  # samples kept for the pairwise IoU (a 256 x 256 matrix of 32^3 grids: ~8 MB of bits)
# "nearly the same grid for every image": the thresholded predictions of different photos overlap
# this much or more on average (different ground-truth objects overlap far less: see above).
# (The per-voxel std is reported but not used: it is small for any set of small objects, since most
# of the cube is empty in every prediction.)
SAME_GRID_IOU = 0.9
GLOBAL, CATEGORY = "baseline/global_mean_shape_test_iou", "baseline/category_mean_shape_test_iou"


class PredictionSpread(L.Callback):
    """Collects statistics of the test predictions ``probs: (B, 32, 32, 32)`` (see the module docstring)."""

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self._hook = None
        self.reset()

    def reset(self) -> None:
        self.n, self.sum, self.sumsq, self.kept = 0, None, None, []

    def on_test_start(self, trainer, pl_module) -> None:
        self.reset()
        self._hook = pl_module.net.register_forward_hook(lambda _m, _i, logits: self.update(torch.sigmoid(logits.float())))

    def on_test_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if trainer.world_size > 1:
            self._gather(trainer.strategy)

    def _gather(self, strategy) -> None:
        """Every rank's statistics on every rank, as one process would have them: ``ShardSampler`` gives
        rank r the test samples r, r + W, r + 2W, ..., so interleaving the ranks' kept rows restores
        the first ``MAX_PAIRWISE`` samples of the whole split."""
        dev = strategy.root_device
        size = int(strategy.reduce(torch.tensor(0 if self.sum is None else self.sum.numel(), device=dev), reduce_op="max"))
        zero = torch.zeros(size, dtype=torch.float64)
        sums = torch.stack([zero if self.sum is None else self.sum, zero if self.sumsq is None else self.sumsq])
        sums = strategy.reduce(sums.to(dev), reduce_op="sum").cpu()
        n = int(strategy.reduce(torch.tensor(self.n, device=dev), reduce_op="sum"))
        kept = torch.cat(self.kept) if self.kept else torch.zeros(0, size, dtype=torch.bool)
        rows = torch.zeros(MAX_PAIRWISE, size, dtype=torch.uint8)  # padded: all_gather needs equal shapes
        rows[: len(kept)] = kept
        every = strategy.all_gather(rows.to(dev)).cpu().bool()  # (W, MAX_PAIRWISE, size)
        counts = strategy.all_gather(torch.tensor([len(kept)], device=dev)).cpu().flatten().tolist()  # (W,)
        order = [every[r, k] for k in range(MAX_PAIRWISE) for r in range(len(counts)) if k < counts[r]]
        self.n, self.sum, self.sumsq = n, sums[0], sums[1]
        self.kept = [torch.stack(order[:MAX_PAIRWISE])] if order else []

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        p = probs.detach().double().flatten(1).cpu()
        self.sum = p.sum(0) if self.sum is None else self.sum + p.sum(0)
        self.sumsq = (p * p).sum(0) if self.sumsq is None else self.sumsq + (p * p).sum(0)
        self.n += len(p)
        room = MAX_PAIRWISE - sum(len(k) for k in self.kept)
        if room > 0:
            self.kept.append(p[:room] >= self.threshold)

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


def headline(metrics: dict) -> str | None:
    """``test IoU@0.3 x | global mean-shape baseline g (+d) | category mean-shape baseline c (+d)``."""
    if "test/iou" not in metrics or GLOBAL not in metrics:
        return None
    iou = metrics["test/iou"]
    parts = [f"test IoU@0.3 {iou:.4f}", f"global mean-shape baseline {metrics[GLOBAL]:.4f} ({iou - metrics[GLOBAL]:+.4f})"]
    if CATEGORY in metrics:
        parts.append(f"category mean-shape baseline {metrics[CATEGORY]:.4f} ({iou - metrics[CATEGORY]:+.4f})")
    return " | ".join(parts)


def degeneracy_warnings(metrics: dict) -> list[str]:
    """What is wrong with a model whose test metrics are ``metrics`` ([] when nothing is)."""
    out = []
    if "test/iou" in metrics and GLOBAL in metrics and metrics["test/iou"] < metrics[GLOBAL]:
        out.append(f"the model is below the global mean shape (test IoU@0.3 {metrics['test/iou']:.4f} < "
                   f"{metrics[GLOBAL]:.4f}): predicting one fixed shape for every image would score higher")
    pairwise = metrics.get("test/pred_pairwise_iou")
    if pairwise is not None and pairwise >= SAME_GRID_IOU:
        occupied = metrics.get("test/pred_occupied_fraction", float("nan"))
        out.append(f"the model predicts nearly the same grid for every image (mean IoU@0.3 between the test "
                   f"predictions of different images {pairwise:.3f} >= {SAME_GRID_IOU}; {occupied:.1%} of the "
                   "voxels occupied): it ignores its input")
    return out


"""Training losses on voxel logits: BCE (the seed report) plus an optional soft-IoU term.

``voxel_loss(logits: (B, 32, 32, 32) float, voxels: (B, 32, 32, 32) {0, 1}) -> scalar float32``.

The soft IoU replaces the thresholded prediction of IoU by the probabilities p = sigmoid(logits):
``soft_iou = sum(p * y) / sum(p + y - p * y)`` per sample (as in Rahman & Wang 2016, "Optimizing
Intersection-Over-Union in Deep Neural Networks"); the loss adds ``soft_iou_weight * (1 - soft_iou)``
averaged over the batch. BCE alone weighs every voxel alike, so thin parts (chair legs, lamp
stems: few voxels) cost little; the IoU term weighs them by the object's size, which is what the
metric does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1.0  # smoothing of the soft-IoU ratio, in voxels: keeps an empty target and prediction finite


def soft_iou(logits: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """logits: (B, ...) float, voxels: (B, ...) in [0, 1] -> (B,) soft IoU of sigmoid(logits), in fp32."""
    p = torch.sigmoid(logits.float()).flatten(1)  # (B, N)
    y = voxels.float().flatten(1)  # (B, N)
    inter = (p * y).sum(1)  # (B,)
    union = (p + y - p * y).sum(1)  # (B,)
    return (inter + EPS) / (union + EPS)


def voxel_loss(logits: torch.Tensor, voxels: torch.Tensor, soft_iou_weight: float = 0.0) -> torch.Tensor:
    """BCE on logits (mean over voxels and batch) + ``soft_iou_weight`` * mean(1 - soft IoU), in fp32.

    soft_iou_weight: 0 (default) is the seed report's plain BCE.
    """
    if soft_iou_weight < 0:
        raise ValueError(f"loss.soft_iou_weight must be >= 0, got {soft_iou_weight}")
    loss = F.binary_cross_entropy_with_logits(logits.float(), voxels.float())
    if soft_iou_weight:
        loss = loss + soft_iou_weight * (1.0 - soft_iou(logits, voxels)).mean()
    return loss

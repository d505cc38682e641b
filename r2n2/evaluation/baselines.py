"""Baselines that use no image: the training set's mean shape, globally or per category.

Thresholded, the mean shape is the best constant answer a model that ignores its input can give;
a reconstruction model is only learning from the image once it beats it.
"""

from __future__ import annotations

import numpy as np
import torch

from r2n2.data.dataset import PackedDataset
from r2n2.evaluation.metrics import THRESHOLD, voxel_iou


def object_voxels(dataset: PackedDataset) -> torch.Tensor:
    """Every object's grid: (N_objects, R, R, R) float {0, 1}."""
    r = dataset.resolution
    bits = np.unpackbits(np.asarray(dataset.voxel_bits()), axis=1)[:, : r**3]
    return torch.from_numpy(bits.reshape(-1, r, r, r).astype(np.float32))


def object_occupancy(dataset: PackedDataset) -> torch.Tensor:
    """Every object's grid as occupancy: (N_objects, R, R, R) bool (an eighth of :func:`object_voxels`'
    memory: 8.8k ShapeNet test objects take 290 MB)."""
    r = dataset.resolution
    bits = np.unpackbits(np.asarray(dataset.voxel_bits()), axis=1)[:, : r**3]
    return torch.from_numpy(np.ascontiguousarray(bits).view(bool).reshape(-1, r, r, r))


def mean_shapes(dataset: PackedDataset) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean occupancy over the samples of ``dataset``: global ``(R, R, R)`` and per category name."""
    grids = object_voxels(dataset)
    weight = torch.from_numpy(np.bincount(dataset.samples[:, 0], minlength=len(grids)).astype(np.float32))
    overall = torch.einsum("n,nxyz->xyz", weight, grids) / weight.sum()
    per_category = {}
    for c, name in enumerate(dataset.categories):
        w = weight * torch.from_numpy(dataset.category_index == c).float()
        if w.sum() > 0:
            per_category[name] = torch.einsum("n,nxyz->xyz", w, grids) / w.sum()
    return overall, per_category


def mean_shape_for(mean: torch.Tensor | dict[str, torch.Tensor], categories: list[str]) -> torch.Tensor:
    """The constant prediction for each of ``categories``: (len(categories), R, R, R).

    mean: a global mean shape (R, R, R), or {category: mean shape}; a category absent from
    training gets the average of the category means."""
    if isinstance(mean, dict):
        fallback = torch.stack(list(mean.values())).mean(0)
        return torch.stack([mean.get(n, fallback) for n in categories])
    return mean.expand(len(categories), *mean.shape)


def baseline_iou(
    mean: torch.Tensor | dict[str, torch.Tensor], dataset: PackedDataset, threshold: float = THRESHOLD
) -> torch.Tensor:
    """Per-sample IoU (N,) of a constant prediction on ``dataset``'s samples.

    mean: a global mean shape (R, R, R), or {category: mean shape} (the category is given)."""
    grids = object_voxels(dataset)
    obj = torch.from_numpy(dataset.samples[:, 0])
    pred_per_object = mean_shape_for(mean, [o["category"] for o in dataset.objects])
    per_object = voxel_iou(pred_per_object, grids, threshold)  # (N_objects,)
    return per_object[obj]

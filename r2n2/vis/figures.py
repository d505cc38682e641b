"""Pictures: 3D voxel plots (matplotlib), the seed report's Figure 2 (input | ground truth |
prediction), used by TensorBoard logging, ``r2n2-eval`` and ``r2n2-predict``."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

from r2n2.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# a light from the upper front, for Lambertian face shading
LIGHT = np.array([0.4, 0.5, 0.75]) / np.linalg.norm([0.4, 0.5, 0.75])


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """``images: (N, 3, H, W)`` normalised with ImageNet mean/std -> (N, 3, H, W) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() * std + mean).clamp(0, 1)


def _exposed_faces(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces of occupied voxels that touch an empty one: quads (F, 4, 3) in plot coordinates and
    their outward normals (F, 3). ``grid: (X, Y, Z) bool`` with y up; the plot's z is up, so grid
    (x, y, z) is drawn at plot (z, x, y), a cyclic permutation that keeps handedness."""
    occ = np.pad(grid.astype(bool), 1)
    quads, normals = [], []
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    for axis in range(3):
        for step in (-1, 1):
            neighbour = np.roll(occ, -step, axis=axis)
            idx = np.argwhere(occ & ~neighbour) - 1  # voxel indices (x, y, z) with that face exposed
            if not len(idx):
                continue
            others = [a for a in range(3) if a != axis]
            corners = np.repeat(idx[:, None, :].astype(float), 4, axis=1)  # (F, 4, 3)
            corners[:, :, axis] += 1.0 if step > 0 else 0.0
            corners[:, :, others[0]] += unit[:, 0]
            corners[:, :, others[1]] += unit[:, 1]
            normal = np.zeros(3)
            normal[axis] = step
            quads.append(corners)
            normals.append(np.repeat(normal[None], len(idx), axis=0))
    if not quads:
        return np.zeros((0, 4, 3)), np.zeros((0, 3))
    quads, normals = np.concatenate(quads), np.concatenate(normals)
    perm = [2, 0, 1]  # grid (x, y, z) -> plot (z, x, y)
    return quads[..., perm], normals[:, perm]


def plot_voxels(ax, grid: np.ndarray, color: Sequence[float] = (0.35, 0.55, 0.85), title: str | None = None) -> None:
    """Draw ``grid: (X, Y, Z) bool`` (y up) on a 3D axis as shaded cubes (only exposed faces)."""
    quads, normals = _exposed_faces(np.asarray(grid))
    shade = 0.45 + 0.55 * np.clip(normals @ LIGHT, 0, 1)
    colors = np.clip(np.asarray(color)[None, :] * shade[:, None], 0, 1)
    ax.add_collection3d(Poly3DCollection(quads, facecolors=colors, edgecolors=colors * 0.8, linewidths=0.2))
    n = max(grid.shape)
    ax.set_xlim(0, n), ax.set_ylim(0, n), ax.set_zlim(0, n)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=25, azim=-60)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def reconstruction_figure(
    images: torch.Tensor,
    voxels: torch.Tensor,
    probs: torch.Tensor,
    threshold: float = 0.3,
    titles: Sequence[str] | None = None,
) -> plt.Figure:
    """The seed report's Figure 2: a row per sample of input view | ground truth | prediction.

    images: (N, 3, H, W) normalised; voxels: (N, R, R, R) {0, 1}; probs: (N, R, R, R) in [0, 1].
    The prediction is ``probs >= threshold``; its IoU with the ground truth is in the title.
    """
    from r2n2.evaluation.metrics import voxel_iou

    images, voxels, probs = denormalize(images).cpu(), voxels.detach().cpu(), probs.detach().float().cpu()
    iou = voxel_iou(probs, voxels, threshold)
    n = len(images)
    fig = plt.figure(figsize=(7.5, 2.5 * n))
    for i in range(n):
        ax = fig.add_subplot(n, 3, 3 * i + 1)
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(titles[i] if titles is not None else "input", fontsize=9)
        plot_voxels(fig.add_subplot(n, 3, 3 * i + 2, projection="3d"), voxels[i].numpy() > 0.5, title="ground truth")
        plot_voxels(
            fig.add_subplot(n, 3, 3 * i + 3, projection="3d"),
            probs[i].numpy() >= threshold,
            color=(0.85, 0.45, 0.3),
            title=f"prediction (IoU {iou[i]:.2f})",
        )
    fig.tight_layout()
    return fig


def iou_threshold_figure(thresholds: np.ndarray, ious: np.ndarray, categories: Sequence[str]) -> plt.Figure:
    """IoU against threshold, one line per category and the mean over samples.

    thresholds: (G,); ious: (N, G) per-sample IoU at each threshold; categories: (N,) names.
    """
    categories = np.asarray(categories)
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in sorted(set(categories.tolist())):
        ax.plot(thresholds, ious[categories == c].mean(0), lw=1, label=c)
    ax.plot(thresholds, ious.mean(0), "k", lw=2.5, label="all (mean over samples)")
    ax.set_xlabel("threshold t (occupied where p >= t)")
    ax.set_ylabel("IoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path, dpi: int = 100) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    import io

    from r2n2.utils.atomic import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def prediction_figure(
    images: torch.Tensor, probs: np.ndarray, threshold: float = 0.3, titles: Sequence[str] | None = None
) -> plt.Figure:
    """The input views and the predicted shape: images (V, 3, H, W) normalised; probs (R, R, R)."""
    images = denormalize(images).cpu()
    n = len(images)
    fig = plt.figure(figsize=(2.6 * (n + 1), 2.8))
    for i in range(n):
        ax = fig.add_subplot(1, n + 1, i + 1)
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(titles[i] if titles is not None else f"view {i + 1}", fontsize=9)
    plot_voxels(
        fig.add_subplot(1, n + 1, n + 1, projection="3d"),
        np.asarray(probs) >= threshold,
        color=(0.85, 0.45, 0.3),
        title=f"prediction (p >= {threshold:g})",
    )
    fig.tight_layout()
    return fig

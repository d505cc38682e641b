"""Image preprocessing, exactly as the seed report: 127x127, [0, 1], ImageNet mean/std; plus the
optional training augmentation: 3D-R2N2's (random crop shift, flip, a random background colour) and a
colour jitter of ours (3D-R2N2 at 13a30e2 has none: lib/data_augmentation.py ``preprocess_img``).

Batches leave the DataLoader as ``rgba: (B, V, S, S, 4) uint8`` (a quarter of float32's bytes,
pinned when training on CUDA); :func:`to_images` turns a whole batch into normalised float images on
whatever device ``rgba`` is on (inside Lightning: ``R2N2DataModule.on_after_batch_transfer``,
r2n2/data/datamodule.py).
Augmentation draws come from an explicit ``torch.Generator``, so a batch's augmentation depends only
on the seed it is given, never on the state of a worker process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from r2n2.data.formats.images import EVAL_BACKGROUND, TRAIN_BACKGROUND_RANGE

# torchvision / ImageNet statistics, as the seed report normalised its inputs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 3D-R2N2 crops 127 of 137 pixels: a random shift of up to 5 pixels each way
CROP_PAD = 5
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale (used by its contrast and saturation jitter)
LUMA = (0.2989, 0.587, 0.114)


@dataclass
class Augment:
    """Training augmentation switches (all off in the paper recipe)."""

    crop: bool = True
    flip: bool = True
    random_background: bool = True
    color_jitter: float = 0.2


@dataclass
class AugmentDraw:
    """One batch's augmentation parameters, one per view (None = that step is off).

    shift: (B, V, 2) int64 (dy, dx) in [-CROP_PAD, CROP_PAD]: output[y, x] = input[y + dy, x + dx],
        transparent outside (3D-R2N2's random 127-of-137 crop, on our already-resized images).
    flip: (B, V) bool, left-right (the image only, as 3D-R2N2 did).
    jitter: (B, V, 3) float (brightness, contrast, saturation) factors, uniform in [1 - j, 1 + j].
    background: (B, V, 3) float R, G, B levels, each drawn separately as uniform integers in
        TRAIN_BACKGROUND_RANGE (3D-R2N2: TRAIN.NO_BG_COLOR_RANGE, [225, 255] per channel).
    """

    shift: torch.Tensor | None = None
    flip: torch.Tensor | None = None
    jitter: torch.Tensor | None = None
    background: torch.Tensor | None = None


def draw_augment(
    augment: Augment,
    batch: int,
    views: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AugmentDraw:
    """Draw every view's augmentation parameters from ``generator`` (on the generator's device), then
    move them to ``device``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shape = (batch, views)

    def uniform(*extra):
        return torch.rand(*shape, *extra, generator=generator, device=gen_device)

    draw = AugmentDraw()
    if augment.crop:
        draw.shift = torch.randint(-CROP_PAD, CROP_PAD + 1, (*shape, 2), generator=generator, device=gen_device)
    if augment.flip:
        draw.flip = uniform() < 0.5
    if augment.color_jitter:
        j = float(augment.color_jitter)
        lo = max(0.0, 1 - j)
        draw.jitter = lo + (1 + j - lo) * uniform(3)
    if augment.random_background:
        lo, hi = TRAIN_BACKGROUND_RANGE
        draw.background = torch.randint(lo, hi + 1, (*shape, 3), generator=generator, device=gen_device).float()
    return AugmentDraw(
        *(
            None if t is None else t.to(device, non_blocking=True)
            for t in (draw.shift, draw.flip, draw.jitter, draw.background)
        )
    )


def to_images(
    rgba: torch.Tensor,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
    draw: AugmentDraw | None = None,
) -> torch.Tensor:
    """``rgba: (B, V, S, S, 4) uint8`` -> ``images: (B, V, 3, S, S) float32``, on ``rgba``'s device.

    Without augmentation every view is composited on grey 240 (3D-R2N2 at test time), scaled to
    [0, 1] and normalised with ImageNet mean/std, exactly the seed report's preprocessing. With
    ``augment`` (training), the parameters are drawn from ``generator`` (see :class:`AugmentDraw`;
    or pass ``draw`` itself) and applied in the order shift, flip, colour jitter of the object
    (brightness, contrast, saturation, torchvision's formulas on [0, 1] RGB, except that contrast
    pulls towards the mean grey of the object's pixels, weighted by alpha, not of the whole image
    with its transparent pixels as black; torchvision's ColorJitter shuffles the order, here it is
    fixed), then alpha compositing on the drawn background colour.
    """
    if rgba.dim() != 5 or rgba.shape[-1] != 4 or rgba.dtype != torch.uint8:
        raise ValueError(f"rgba must be (B, V, S, S, 4) uint8, got {tuple(rgba.shape)} {rgba.dtype}")
    b, v = rgba.shape[:2]
    if draw is None and augment is not None:
        draw = draw_augment(augment, b, v, generator, rgba.device)
    draw = draw or AugmentDraw()
    if draw.shift is not None:
        rgba = _shift(rgba, draw.shift)
    if draw.flip is not None:
        rgba = torch.where(draw.flip[:, :, None, None, None], rgba.flip(3), rgba)
    chw = rgba.permute(0, 1, 4, 2, 3)  # (B, V, 4, S, S) uint8, a view
    # each read once, strided, into a contiguous float tensor (no contiguous uint8 copy first)
    rgb = chw[:, :, :3].to(torch.float32, memory_format=torch.contiguous_format)
    alpha = chw[:, :, 3:].to(torch.float32, memory_format=torch.contiguous_format)
    if draw.jitter is not None:
        rgb = _jitter(rgb / 255, alpha, draw.jitter).mul_(255)
    if draw.background is not None:
        background = draw.background[:, :, :, None, None]  # (B, V, 3, 1, 1)
    else:
        background = float(EVAL_BACKGROUND)
    # (rgb * a + bg * (1 - a) - mean) / std, with a = alpha / 255, in three in-place passes
    mean, std = _mean_std(rgba.device)
    scale, shift = 1 / (255 * std), (background - mean) / std
    return rgb.sub_(background).mul_(alpha).mul_(scale).add_(shift)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std * 255, (3, 1, 1) each, made once per device (no copy per batch)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    return mean.to(device), std.to(device)


def _shift(rgba: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Translate every view by its (dy, dx), filling with transparent pixels. rgba: (B, V, S, S, 4)."""
    b, v, s = rgba.shape[:3]
    flat = rgba.flatten(0, 1)  # (N, S, S, 4)
    padded = flat.new_zeros(b * v, s + 2 * CROP_PAD, s + 2 * CROP_PAD, 4)
    padded[:, CROP_PAD : CROP_PAD + s, CROP_PAD : CROP_PAD + s] = flat
    ar = torch.arange(s, device=rgba.device)
    dy, dx = shift.flatten(0, 1).unbind(-1)  # (N,) each
    rows = (CROP_PAD + dy)[:, None, None] + ar[None, :, None]  # (N, S, 1)
    cols = (CROP_PAD + dx)[:, None, None] + ar[None, None, :]  # (N, 1, S)
    n = torch.arange(b * v, device=rgba.device)[:, None, None]
    return padded[n, rows, cols].view_as(rgba)


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, S, S) -> (..., 1, S, S) luma."""
    r, g, b = rgb.unbind(-3)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(-3)


def _jitter(rgb: torch.Tensor, alpha: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation as torchvision (float images in [0, 1], clamped after each),
    contrast about the object's mean grey: the mean over pixels weighted by alpha (a view 69%
    transparent would otherwise count 69% black and darken the object).

    rgb: (B, V, 3, S, S) float in [0, 1]; alpha: (B, V, 1, S, S) float 0..255; factors: (B, V, 3).
    Returns (B, V, 3, S, S) in [0, 1].
    """
    f = factors[..., None, None, None]  # (B, V, 3, 1, 1, 1)
    rgb = (rgb * f[:, :, 0]).clamp_(0, 1)
    weight = alpha.sum((-3, -2, -1), keepdim=True).clamp_(min=1)  # (B, V, 1, 1, 1)
    mean = (_grey(rgb) * alpha).sum((-3, -2, -1), keepdim=True) / weight
    rgb = (rgb * f[:, :, 1] + mean * (1 - f[:, :, 1])).clamp_(0, 1)
    return (rgb * f[:, :, 2] + _grey(rgb) * (1 - f[:, :, 2])).clamp_(0, 1)


# ShapeNetRendering objects span about this share of the image side (the alpha bounding box's longer
# side over 137 px, 7 real objects x 24 views: mean 0.66, range 0.36-0.93); photos are framed to match
OBJECT_FILL = 0.7


def frame_object(rgba: np.ndarray, fill: float = OBJECT_FILL, tolerance: int = 30) -> np.ndarray:
    """Pad or crop an image to a square centred on the object, the object spanning ``fill`` of it.

    rgba: (H, W, 4) uint8. The object is where alpha > 0 if the image has transparency, else where
    the colour differs by more than ``tolerance`` from the background (the median border colour).
    Padding uses the background (transparent, or the border colour). Returns (S, S, 4) uint8.
    """
    alpha = rgba[..., 3]
    if (alpha < 255).any():
        mask, fill_value = alpha > 0, np.zeros(4, np.uint8)
    else:
        border = np.concatenate([rgba[0], rgba[-1], rgba[:, 0], rgba[:, -1]])[:, :3]
        background = np.median(border, axis=0)
        mask = np.abs(rgba[..., :3].astype(np.int16) - background).max(-1) > tolerance
        fill_value = np.r_[background.astype(np.uint8), 255]
    if not mask.any():
        mask = np.ones_like(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    cy, cx = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    side = max(int(round(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / fill)), 1)
    top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
    out = np.tile(fill_value, (side, side, 1))
    h, w = alpha.shape
    src_r, src_c = slice(max(top, 0), min(top + side, h)), slice(max(left, 0), min(left + side, w))
    dst_r = slice(src_r.start - top, src_r.stop - top)
    dst_c = slice(src_c.start - left, src_c.stop - left)
    out[dst_r, dst_c] = rgba[src_r, src_c]
    return out

"""Image preprocessing, exactly as the seed report: 127x127, [0, 1], ImageNet mean/std; plus the
optional 3D-R2N2 training augmentation (random crop, flip, random background, colour jitter).

It runs on whole batches (in the DataLoader's workers), so reading from the cache stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from r2n2.data.formats.images import EVAL_BACKGROUND, TRAIN_BACKGROUND_RANGE

# torchvision / ImageNet statistics, as the seed report normalised its inputs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 3D-R2N2 crops 127 of 137 pixels: a random shift of up to 5 pixels each way
CROP_PAD = 5


@dataclass
class Augment:
    """Training augmentation switches (all off in the paper recipe)."""

    crop: bool = True
    flip: bool = True
    random_background: bool = True
    color_jitter: float = 0.2


class Preprocess:
    """``rgba: (B, V, S, S, 4) uint8`` -> ``images: (B, V, 3, S, S) float``, normalised.

    With ``augment`` (training only) each view is shifted by up to ``CROP_PAD`` pixels (3D-R2N2's
    random 127-of-137 crop, on our already-resized images), flipped left-right (the image only, as
    3D-R2N2 did), colour-jittered, and composited on a random grey in [225, 255]; otherwise every
    view is composited on 240, as 3D-R2N2 did at test time.
    """

    def __init__(self, image_size: int = 127, augment: Augment | None = None):
        self.augment = augment
        self.mean = torch.tensor(IMAGENET_MEAN) * 255
        self.std = torch.tensor(IMAGENET_STD) * 255
        ops = []
        if augment is not None:
            if augment.crop:
                ops.append(v2.RandomCrop(image_size, padding=CROP_PAD, fill=0))  # fill 0 = transparent
            if augment.flip:
                ops.append(v2.RandomHorizontalFlip())
            if augment.color_jitter:
                j = augment.color_jitter
                ops.append(_RGBOnly(v2.ColorJitter(brightness=j, contrast=j, saturation=j)))
        self.per_view = v2.Compose(ops) if ops else None

    def __call__(self, rgba: torch.Tensor) -> torch.Tensor:
        b, v = rgba.shape[:2]
        if self.per_view is not None:
            flat = rgba.flatten(0, 1).permute(0, 3, 1, 2)  # (B*V, 4, S, S)
            flat = torch.stack([self.per_view(x) for x in flat])
            rgba = flat.permute(0, 2, 3, 1).unflatten(0, (b, v))
        if self.augment is not None and self.augment.random_background:
            lo, hi = TRAIN_BACKGROUND_RANGE
            background = torch.randint(lo, hi + 1, (b, v, 1, 1, 1)).float()
        else:
            background = torch.tensor(float(EVAL_BACKGROUND))
        # (rgb * a + bg * (1 - a) - mean) / std, with a = alpha / 255, in three in-place passes
        chw = rgba.permute(0, 1, 4, 2, 3).contiguous()  # (B, V, 4, S, S) uint8
        rgb, alpha = chw[:, :, :3].float(), chw[:, :, 3:].float()
        scale = (1 / (255 * self.std)).view(3, 1, 1)
        shift = (background - self.mean.view(3, 1, 1)) / self.std.view(3, 1, 1)
        return rgb.sub_(background).mul_(alpha).mul_(scale).add_(shift)


class _RGBOnly(torch.nn.Module):
    """Apply a colour transform to the RGB channels of a (4, S, S) RGBA image, keeping alpha."""

    def __init__(self, transform):
        super().__init__()
        self.transform = transform

    def forward(self, rgba: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.transform(rgba[:3]), rgba[3:]])


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
        mask = (np.abs(rgba[..., :3].astype(np.int16) - background).max(-1) > tolerance)
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

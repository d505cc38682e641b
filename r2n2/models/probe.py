"""``LaunchProbe``: a network so small that a training step costs about what the loop around it
costs (``r2n2-bench --probe``), as a launch-bound GPU step's host time does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# 4 x 4 pooled RGB per view: 48 features
POOL = 4
# logits predicted on a coarse 8^3 grid and repeated to the full one: a full-size output layer
# (64 x 32^3 weights) would make Adam's update of 2.1M parameters the step's main cost
COARSE = 8


class LaunchProbe(nn.Module):
    """``images: (B, V, 3, S, S) float -> logits: (B, R, R, R) float``: each view average-pooled to
    4 x 4, the views averaged, Linear(48, hidden) -> ReLU -> Linear(hidden, 8^3), each coarse logit
    repeated over an (R / 8)^3 block. ~36k parameters."""

    def __init__(self, hidden: int = 64, resolution: int = 32):
        super().__init__()
        if resolution % COARSE:
            raise ValueError(f"LaunchProbe: resolution must be a multiple of {COARSE}, got {resolution}")
        self.resolution = resolution
        self.hidden = nn.Linear(3 * POOL * POOL, hidden)
        self.out = nn.Linear(hidden, COARSE**3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = F.adaptive_avg_pool2d(images.flatten(0, 1), POOL).view(b, v, -1).mean(1)  # (B, 48)
        coarse = self.out(torch.relu(self.hidden(x))).view(b, 1, COARSE, COARSE, COARSE)
        return F.interpolate(coarse, size=self.resolution, mode="nearest")[:, 0]  # (B, R, R, R)

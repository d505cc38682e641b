"""``LaunchProbe``: a network so small that a training step costs what launching it costs, to measure
the training loop's own per-step cost (``r2n2-bench --probe``), as a GPU step's host time does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# 4 x 4 pooled RGB per view: 48 features
POOL = 4


class LaunchProbe(nn.Module):
    """``images: (B, V, 3, S, S) float -> logits: (B, R, R, R) float``: each view average-pooled to
    4 x 4, the views averaged, then Linear(48, 64) -> ReLU -> Linear(64, R^3)."""

    def __init__(self, hidden: int = 64, resolution: int = 32):
        super().__init__()
        self.resolution = resolution
        self.hidden = nn.Linear(3 * POOL * POOL, hidden)
        self.out = nn.Linear(hidden, resolution**3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = F.adaptive_avg_pool2d(images.flatten(0, 1), POOL).view(b, v, -1).mean(1)  # (B, 48)
        r = self.resolution
        return self.out(torch.relu(self.hidden(x))).view(b, r, r, r)

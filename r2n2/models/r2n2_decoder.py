"""3D-R2N2's 3D decoder: the hidden grid (B, 128, 4, 4, 4) -> occupancy logits (B, 32, 32, 32).

Plain (models/gru_net.py):
    3 x [x2 unpool -> Conv3d 3x3x3 (128, 128, 64 channels) -> LeakyReLU]   4 -> 8 -> 16 -> 32
    -> Conv3d(64 -> 32) -> LeakyReLU -> Conv3d(32 -> 1)
Residual (models/res_gru_net.py): each conv -> LeakyReLU becomes a :class:`ResidualBlock`: two 3x3x3
convs with an identity shortcut at 128 -> 128, a 1x1x1 projection at 128 -> 64, and at 64 -> 32 the
original's shortcut from the block's first activation through one more 3x3x3 conv.

The original ends with 2 channels and a voxel-wise softmax; here one logit channel is trained with BCE,
the seed model's head, so both models are compared under the same loss (2 logits under a softmax are
one logit, their difference, under a sigmoid).

Unpooling: "nearest" repeats each voxel 2x2x2 (nearest up-sampling); "zeros" is the original's
``Unpool3DLayer``, which puts each voxel at the even corner of its 2x2x2 cell and zeros elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r2n2.models.encoder import LEAKY_SLOPE
from r2n2.models.residual import ResidualBlock

# 3D-R2N2: n_deconvfilter = [128, 128, 128, 64, 32, 2]: the hidden grid, the 3 unpool-conv stages, the
# 32-channel conv and the 2 softmax classes (here 1 logit)
IN_CHANNELS = 128
UNPOOL_CHANNELS = (128, 128, 64)
LAST_CHANNELS = 32
# the output side: 3 x2 unpoolings of the 4^3 hidden grid (3D-R2N2 trains on ShapeNetVox32)
OUTPUT_GRID = 32
KERNEL = 3
UNPOOL_MODES = ("nearest", "zeros")


class Unpool3d(nn.Module):
    """x2 up-sampling of a grid: (B, C, D, H, W) -> (B, C, 2D, 2H, 2W); mode "nearest" or "zeros"."""

    def __init__(self, mode: str = "nearest") -> None:
        super().__init__()
        if mode not in UNPOOL_MODES:
            raise ValueError(f"unpool must be one of {UNPOOL_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        B, C, D, H, W = x.shape
        out = x.new_zeros(B, C, 2 * D, 2 * H, 2 * W)
        out[:, :, ::2, ::2, ::2] = x
        return out


class R2N2Decoder(nn.Module):
    """``forward(h: (B, 128, 4, 4, 4) float) -> logits: (B, 32, 32, 32) float`` (no sigmoid).

    Args:
        residual: False (3D-GRU-3's decoder) or True (Res3D-GRU-3's).
        unpool: "nearest" (default) or "zeros" (the original's), see the module docstring.
    """

    def __init__(self, residual: bool = False, unpool: str = "nearest") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = IN_CHANNELS
        for c_out in UNPOOL_CHANNELS:
            layers.append(Unpool3d(unpool))
            if residual:
                layers.append(ResidualBlock(3, c_in, c_out, shortcut="identity" if c_in == c_out else "project"))
            else:
                layers += [nn.Conv3d(c_in, c_out, KERNEL, padding=KERNEL // 2), nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c_out
        if residual:
            layers.append(ResidualBlock(3, c_in, LAST_CHANNELS, shortcut="conv_a"))
        else:
            layers += [nn.Conv3d(c_in, LAST_CHANNELS, KERNEL, padding=KERNEL // 2), nn.LeakyReLU(LEAKY_SLOPE)]
        layers.append(nn.Conv3d(LAST_CHANNELS, 1, KERNEL, padding=KERNEL // 2))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, 128, 4, 4, 4) float -> logits: (B, 32, 32, 32) float."""
        return self.net(h).squeeze(1)  # (B, 1, 32, 32, 32) -> (B, 32, 32, 32)

"""The residual block of 3D-R2N2's Res3D-GRU-3 (models/res_gru_net.py), in 2D (encoder) or 3D (decoder).

    a   = LeakyReLU(conv_a(x))          kernel k_a ('same' padding)
    y   = LeakyReLU(conv_b(a))          kernel 3
    out = y + shortcut

with one of the shortcuts the original uses:
    "none":     out = y                          (encoder blocks 1 and 4)
    "identity": shortcut = x, c_in == c_out      (encoder block 6, decoder blocks 7 and 8)
    "project":  shortcut = 1x1(x1) conv of x     (encoder blocks 2, 3, 5, decoder block 9)
    "conv_a":   shortcut = 3x3(x3) conv of a     (decoder block 10: ``conv10c(rect10a)``)
The sum is not followed by an activation, as in the original (``AddLayer`` after ``LeakyReLU``).
"""

from __future__ import annotations

import torch
from torch import nn

from r2n2.models.encoder import LEAKY_SLOPE

SHORTCUTS = ("none", "identity", "project", "conv_a")
KERNEL = 3  # 3D-R2N2: every second conv of a residual block is 3x3 (3x3x3)


class ResidualBlock(nn.Module):
    """``forward(x: (N, c_in, *S) float) -> (N, c_out, *S) float``, S the 2 or 3 spatial sizes (kept).

    Args:
        dims: 2 (Conv2d) or 3 (Conv3d).
        c_in, c_out: channels.
        kernel_a: the first conv's odd kernel; default 3 (7 for the encoder's first block).
        shortcut: "none" | "identity" | "project" | "conv_a", see the module docstring.
    """

    def __init__(self, dims: int, c_in: int, c_out: int, kernel_a: int = KERNEL, shortcut: str = "identity") -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if shortcut == "identity" and c_in != c_out:
            raise ValueError(f"an identity shortcut needs c_in == c_out, got {c_in} -> {c_out}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.shortcut = shortcut
        self.conv_a = conv(c_in, c_out, kernel_a, padding=kernel_a // 2)
        self.conv_b = conv(c_out, c_out, KERNEL, padding=KERNEL // 2)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        if shortcut == "project":
            self.conv_s = conv(c_in, c_out, 1)
        elif shortcut == "conv_a":
            self.conv_s = conv(c_out, c_out, KERNEL, padding=KERNEL // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, c_in, *S) float -> (N, c_out, *S) float."""
        a = self.act(self.conv_a(x))
        y = self.act(self.conv_b(a))
        if self.shortcut == "identity":
            return y + x
        if self.shortcut == "project":
            return y + self.conv_s(x)
        if self.shortcut == "conv_a":
            return y + self.conv_s(a)
        return y

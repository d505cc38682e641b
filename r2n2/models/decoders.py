"""Voxel decoders: a hidden vector (B, H) -> occupancy logits (B, 32, 32, 32) (no sigmoid applied).

- ``LinearConv3dDecoder``: the seed report's decoder, Linear(H -> C * 32^3) -> reshape -> one Conv3d.
- ``UpConvDecoder``: a small 3D up-convolution decoder, Linear(H -> C0 * 4^3) -> three stride-2
  ConvTranspose3d (4 -> 8 -> 16 -> 32) -> Conv3d to 1 channel; about 1/6 of the linear decoder's
  parameters at H = 128 (REFERENCE.md: such a decoder with encoder BatchNorm reached the best IoU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

GRID = 32  # 3D-R2N2 / ShapeNetVox32: 32^3 voxel grids


class LinearConv3dDecoder(nn.Module):
    """Seed report: Linear(in_features -> channels * 32^3) -> (B, channels, 32, 32, 32) -> Conv3d(channels, 1).

    ``forward(h: (B, in_features) float) -> logits: (B, 32, 32, 32) float``.
    As in the report there is no activation between the linear layer and the Conv3d.

    Args:
        in_features: H, the hidden size.
        channels: channels of the reshaped grid, the Conv3d's input (its output is 1); default 1 (seed).
            The linear layer grows with it: in_features * channels * 32^3 weights.
        kernel_size: the Conv3d's (odd) kernel; default 3, padding keeps 32^3.
        grid: output side length; default 32.
    """

    def __init__(self, in_features: int, channels: int = 1, kernel_size: int = 3, grid: int = GRID) -> None:
        super().__init__()
        self.channels, self.grid = int(channels), int(grid)
        self.fc = nn.Linear(in_features, self.channels * self.grid**3)
        self.conv = nn.Conv3d(self.channels, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, H) float -> logits: (B, G, G, G) float."""
        g = self.grid
        x = self.fc(h).view(-1, self.channels, g, g, g)  # (B, C, G, G, G)
        return self.conv(x).squeeze(1)  # (B, 1, G, G, G) -> (B, G, G, G)


class UpConvDecoder(nn.Module):
    """Linear(in_features -> c0 * 4^3) -> ReLU -> 3 x [ConvTranspose3d(k4, s2, p1) -> BatchNorm3d -> ReLU]
    -> Conv3d(c3, 1, 3).

    ``forward(h: (B, in_features) float) -> logits: (B, 32, 32, 32) float``.

    Args:
        in_features: H, the hidden size.
        channels: (c0, c1, c2, c3): c0 the channels of the 4^3 grid out of the linear layer, then the
            output channels of each up-convolution; default (64, 32, 16, 8).
        start: side of the first grid; default 4, so three doublings give 32.
    Kernel 4, stride 2, padding 1 doubles each side exactly: (s - 1) * 2 - 2 + 4 = 2s. The transposed
    convs have no bias (the BatchNorm3d shift replaces it).
    """

    def __init__(self, in_features: int, channels: Sequence[int] = (64, 32, 16, 8), start: int = 4) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs the linear grid's channels and >= 1 up-conv, got {channels}")
        self.channels, self.start = channels, int(start)
        self.fc = nn.Linear(in_features, channels[0] * self.start**3)
        layers: list[nn.Module] = [nn.ReLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [
                nn.ConvTranspose3d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(c_out),
                nn.ReLU(),
            ]
        layers.append(nn.Conv3d(channels[-1], 1, kernel_size=3, padding=1))
        self.net = nn.Sequential(*layers)
        self.grid = self.start * 2 ** (len(channels) - 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, H) float -> logits: (B, G, G, G) float, G = start * 2^(len(channels) - 1)."""
        s = self.start
        x = self.fc(h).view(-1, self.channels[0], s, s, s)  # (B, c0, 4, 4, 4)
        x = self.net(x)  # (B, 1, 32, 32, 32): 4 -> 8 -> 16 -> 32
        return x.squeeze(1)  # (B, 32, 32, 32)


DECODERS = {"linear_conv3d": LinearConv3dDecoder, "upconv": UpConvDecoder}


def build_decoder(in_features: int, name: str = "linear_conv3d", **kwargs) -> nn.Module:
    """Build a decoder by name ("linear_conv3d" | "upconv"); ``kwargs`` go to its constructor."""
    if name not in DECODERS:
        raise ValueError(f"decoder name must be one of {tuple(DECODERS)}, got {name!r}")
    return DECODERS[name](in_features, **kwargs)

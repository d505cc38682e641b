"""Voxel decoders: a hidden vector (B, H) -> occupancy logits (B, R, R, R) (no sigmoid applied), R the
resolution (``data.resolution``: 32, the default and the paper's, 64 or 128).

- ``LinearConv3dDecoder``: the seed report's decoder, Linear(H -> C * 32^3) -> reshape -> one Conv3d;
  32^3 only (at 64^3 its linear layer alone would hold H * C * 64^3 = 33.6M weights at H = 128).
- ``UpConvDecoder``: a small 3D up-convolution decoder, Linear(H -> C0 * 4^3) -> stride-2
  ConvTranspose3d stages (4 -> 8 -> 16 -> 32, one more per doubling to 64 or 128) -> Conv3d to 1
  channel; about 1/6 of the linear decoder's parameters at H = 128 and 32^3 (REFERENCE.md: such a
  decoder with encoder BatchNorm reached the best IoU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

GRID = 32  # 3D-R2N2 / ShapeNetVox32: 32^3 voxel grids, the default resolution
# the up-convolution decoder's channels at 32^3 (docs/ablation.md section 5): the 4^3 grid's, then each stage's
UPCONV_CHANNELS = (64, 32, 16, 8)


class LinearConv3dDecoder(nn.Module):
    """Seed report: Linear(in_features -> channels * 32^3) -> (B, channels, 32, 32, 32) -> Conv3d(channels, 1).

    ``forward(h: (B, in_features) float) -> logits: (B, 32, 32, 32) float``.
    As in the report there is no activation between the linear layer and the Conv3d.

    Args:
        in_features: H, the hidden size.
        channels: channels of the reshaped grid, the Conv3d's input (its output is 1); default 1 (seed).
            The linear layer grows with it: in_features * channels * 32^3 weights.
        kernel_size: the Conv3d's (odd) kernel; default 3, padding keeps 32^3.
        resolution: the output side: 32 only, the report's design (a ValueError otherwise: use
            ``decoder.name=upconv`` for 64^3 or 128^3).
    """

    def __init__(self, in_features: int, channels: int = 1, kernel_size: int = 3, resolution: int = GRID) -> None:
        super().__init__()
        if resolution != GRID:
            raise ValueError(
                f"the linear_conv3d decoder is the seed report's {GRID}^3 design (Linear(H -> C * R^3) would "
                f"hold {int(in_features) * int(channels) * int(resolution) ** 3:,} weights at resolution "
                f"{resolution}); use model.decoder.name=upconv for data.resolution={resolution}"
            )
        self.channels, self.grid = int(channels), GRID
        self.fc = nn.Linear(in_features, self.channels * self.grid**3)
        self.conv = nn.Conv3d(self.channels, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, H) float -> logits: (B, G, G, G) float."""
        g = self.grid
        x = self.fc(h).view(-1, self.channels, g, g, g)  # (B, C, G, G, G)
        return self.conv(x).squeeze(1)  # (B, 1, G, G, G) -> (B, G, G, G)


class UpConvDecoder(nn.Module):
    """Linear(in_features -> c0 * 4^3) -> ReLU -> n x [ConvTranspose3d(k4, s2, p1) -> BatchNorm3d -> ReLU]
    -> Conv3d(c_n, 1, 3), n = log2(R / start) stages: 3 at 32^3, 4 at 64^3, 5 at 128^3.

    ``forward(h: (B, in_features) float) -> logits: (B, R, R, R) float``.

    Args:
        in_features: H, the hidden size.
        channels: (c0, c1, ..., cn): c0 the channels of the 4^3 grid out of the linear layer, then the
            output channels of each up-convolution; default ``UPCONV_CHANNELS`` (64, 32, 16, 8) at 32^3,
            each further doubling adding a stage of 8 channels (the 32^3 network's modules and names
            are then those of the 32^3 default, so its checkpoints load unchanged).
        start: side of the first grid; default 4, so three doublings give 32.
        resolution: R, the output side; ``start * 2^n`` (a ValueError names a mismatch with ``channels``).
    Kernel 4, stride 2, padding 1 doubles each side exactly: (s - 1) * 2 - 2 + 4 = 2s. The transposed
    convs have no bias (the BatchNorm3d shift replaces it).
    """

    def __init__(
        self, in_features: int, channels: Sequence[int] | None = None, start: int = 4, resolution: int = GRID
    ) -> None:
        super().__init__()
        stages = math.log2(resolution / start) if resolution > 0 and start > 0 else 0
        if stages < 1 or stages != int(stages):
            raise ValueError(f"upconv decoder: resolution {resolution} is not start={start} doubled 1 or more times")
        if channels is None:
            extra = int(stages) - (len(UPCONV_CHANNELS) - 1)
            channels = UPCONV_CHANNELS[: int(stages) + 1] + (UPCONV_CHANNELS[-1],) * max(extra, 0)
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs the linear grid's channels and >= 1 up-conv, got {channels}")
        if len(channels) - 1 != stages:
            raise ValueError(
                f"upconv decoder: channels {list(channels)} give {len(channels) - 1} doublings of {start}^3, "
                f"resolution {resolution} needs {int(stages)} (one entry per stage after the first)"
            )
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
        """h: (B, H) float -> logits: (B, R, R, R) float, R = start * 2^(len(channels) - 1)."""
        s = self.start
        x = self.fc(h).view(-1, self.channels[0], s, s, s)  # (B, c0, 4, 4, 4)
        x = self.net(x)  # (B, 1, R, R, R): 4 -> 8 -> 16 -> 32 (-> 64 -> 128)
        return x.squeeze(1)  # (B, R, R, R)


DECODERS = {"linear_conv3d": LinearConv3dDecoder, "upconv": UpConvDecoder}


def build_decoder(in_features: int, name: str = "linear_conv3d", resolution: int = GRID, **kwargs) -> nn.Module:
    """Build a decoder by name ("linear_conv3d" | "upconv") for ``resolution``^3 logits; ``kwargs`` go to
    its constructor."""
    if name not in DECODERS:
        raise ValueError(f"decoder name must be one of {tuple(DECODERS)}, got {name!r}")
    return DECODERS[name](in_features, resolution=resolution, **kwargs)

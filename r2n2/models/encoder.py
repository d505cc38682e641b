"""The 3D-R2N2 2D image encoder: 6 conv blocks, then flatten (and an optional fully connected layer).

Block = Conv2d ('same' padding) -> [BatchNorm2d] -> LeakyReLU(0.01) -> MaxPool2d(2), the seed report's
order. 3D-R2N2 pooled before the activation (conv -> pool -> LeakyReLU); LeakyReLU is monotonic, so it
commutes with max pooling and both orders compute the same function.

Spatial size with the default 127x127 input: 127 -> 63 -> 31 -> 15 -> 7 -> 3 -> 1 (floor halving), so
the flattened feature is channels[-1] * 1 * 1 = 256.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# 3D-R2N2 (Choy et al. 2016), encoder: channels per conv block, first kernel 7x7 and the rest 3x3
R2N2_CHANNELS = (96, 128, 256, 256, 256, 256)
R2N2_FIRST_KERNEL = 7
R2N2_KERNEL = 3
LEAKY_SLOPE = 0.01  # 3D-R2N2: LeakyReLU(0.01)
IMAGE_SIZE = 127  # 3D-R2N2 / seed report: 137x137 renderings cropped or resized to 127x127

NORMS = ("none", "batch")
INITS = ("default", "kaiming", "xavier")


def init_weights(module: nn.Module, init: str = "default", negative_slope: float = LEAKY_SLOPE) -> None:
    """Re-initialise every Conv/ConvTranspose/Linear weight in ``module``; biases become zero.

    ``init``: "default" keeps PyTorch's own initialisation (nothing is touched); "kaiming" draws
    kaiming-normal weights for a LeakyReLU of ``negative_slope`` (fan_in); "xavier" draws xavier-uniform.
    Norm layers keep their defaults (weight 1, bias 0).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Encoder2D(nn.Module):
    """Per-image encoder. ``forward(images: (N, 3, S, S) float) -> (N, out_dim) float``.

    Args:
        channels: output channels of each conv block; default the 3D-R2N2 (96, 128, 256, 256, 256, 256).
        kernel_sizes: one odd kernel size per block; default 7 for the first block and 3 for the rest.
        norm: "none" (the seed model and 3D-R2N2) or "batch" (BatchNorm2d after each conv, before the
            activation; the conv then has no bias, as the norm's shift replaces it).
        fc_dim: None (the seed model: the flattened feature is the output) or a width such as 1024
            (3D-R2N2: flatten -> Linear(fc_dim) -> LeakyReLU).
        init: weight initialisation, see :func:`init_weights`; default "default" (PyTorch's own).
        in_channels: 3 (RGB).
        image_size: S, the input height = width; only used to size the flattened feature.
    """

    def __init__(
        self,
        channels: Sequence[int] = R2N2_CHANNELS,
        kernel_sizes: Sequence[int] | None = None,
        norm: str = "none",
        fc_dim: int | None = None,
        init: str = "default",
        in_channels: int = 3,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must not be empty")
        if kernel_sizes is None:
            kernel_sizes = (R2N2_FIRST_KERNEL,) + (R2N2_KERNEL,) * (len(channels) - 1)
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(kernel_sizes) != len(channels):
            raise ValueError(f"{len(kernel_sizes)} kernel sizes for {len(channels)} conv blocks")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")

        blocks: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for c_out, k in zip(channels, kernel_sizes):
            blocks.append(nn.Conv2d(c_in, c_out, k, padding="same", bias=(norm == "none")))
            if norm == "batch":
                blocks.append(nn.BatchNorm2d(c_out))
            blocks += [nn.LeakyReLU(LEAKY_SLOPE), nn.MaxPool2d(2)]
            c_in, size = c_out, size // 2  # max pool 2x2, stride 2: floor halving
        if size < 1:
            raise ValueError(f"{len(channels)} poolings shrink a {image_size}px image to nothing")
        self.features = nn.Sequential(*blocks)
        flat_dim = channels[-1] * size * size

        if fc_dim is None:
            self.fc = nn.Identity()
            self.out_dim = flat_dim
        else:
            self.fc = nn.Sequential(nn.Linear(flat_dim, int(fc_dim)), nn.LeakyReLU(LEAKY_SLOPE))
            self.out_dim = int(fc_dim)
        init_weights(self, init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, S, S) float -> features: (N, out_dim) float."""
        x = self.features(images)  # (N, C_last, s, s); s = 1 for S = 127 and 6 blocks
        x = x.flatten(1)  # (N, C_last * s * s)
        return self.fc(x)  # (N, out_dim)

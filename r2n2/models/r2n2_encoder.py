"""3D-R2N2's 2D image encoder as the original code builds it: 6 blocks, then flatten -> FC 1024 -> LeakyReLU.

Plain (models/gru_net.py): block = Conv2d -> LeakyReLU(0.01) -> 2x2 max pool, channels 96, 128, 256,
256, 256, 256, kernels 7, 3, 3, 3, 3, 3. (The original pools before the LeakyReLU; see below why the
order does not matter.)
Residual (models/res_gru_net.py, "deep residual"): block = :class:`ResidualBlock` (two convs, the
first 7x7 in block 1, with the original's shortcuts, :data:`RES_SHORTCUTS`) -> 2x2 max pool.

Pooling differs from :class:`r2n2.models.encoder.Encoder2D` (which halves with floor, 127 -> ... -> 1):
the original's ``PoolLayer`` zero-pads 1 pixel on each side, then pools 2x2 with stride 2 dropping the
leftover, so each side goes s -> s // 2 + 1: 127 -> 64 -> 33 -> 17 -> 9 -> 5 -> 3, and the fully
connected layer sees 256 * 3 * 3 = 2304 features (2.36M weights; with Encoder2D's 1x1 it would be 0.26M
and the GRU net 30.1M parameters instead of the paper's 32.2M). LeakyReLU is monotonic and keeps 0, so
max(0, LeakyReLU(x)) = LeakyReLU(max(0, x)): with zero padding too the pool and activation commute.

``forward(images: (N, 3, 127, 127) float) -> (N, 1024) float``.
"""

from __future__ import annotations

import torch
from torch import nn

from r2n2.models.encoder import IMAGE_SIZE, LEAKY_SLOPE, R2N2_CHANNELS, R2N2_FIRST_KERNEL, R2N2_KERNEL
from r2n2.models.residual import ResidualBlock

FC_DIM = 1024  # 3D-R2N2: n_fc_filters = [1024]
POOL_PADDING = 1  # 3D-R2N2 lib/layers.py PoolLayer: padding=(1, 1), pool 2x2, ignore_border=True
# 3D-R2N2 models/res_gru_net.py: shortcut of each encoder block (conv1c, conv4c do not exist; conv5c is
# a 1x1 projection though 256 -> 256; block 6 adds its input)
RES_SHORTCUTS = ("none", "project", "project", "none", "project", "identity")


def pool() -> nn.Module:
    """The original's max pool: zero padding 1, 2x2, stride 2 -> (N, C, s // 2 + 1, s // 2 + 1)."""
    return nn.Sequential(nn.ZeroPad2d(POOL_PADDING), nn.MaxPool2d(2))


class R2N2Encoder(nn.Module):
    """Per-image encoder. ``forward(images: (N, 3, S, S) float) -> (N, fc_dim) float``.

    Args:
        residual: False (3D-GRU-3's encoder) or True (Res3D-GRU-3's deep residual encoder).
        fc_dim: width of the fully connected layer; default 1024.
        image_size: S; only used to size the fully connected layer (127 -> 3x3 after 6 pools).
    """

    def __init__(self, residual: bool = False, fc_dim: int = FC_DIM, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self.residual = bool(residual)
        kernels = (R2N2_FIRST_KERNEL,) + (R2N2_KERNEL,) * (len(R2N2_CHANNELS) - 1)
        blocks: list[nn.Module] = []
        c_in, size = 3, int(image_size)
        for c_out, k, shortcut in zip(R2N2_CHANNELS, kernels, RES_SHORTCUTS):
            if self.residual:
                blocks.append(ResidualBlock(2, c_in, c_out, kernel_a=k, shortcut=shortcut))
            else:
                blocks += [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.LeakyReLU(LEAKY_SLOPE)]
            blocks.append(pool())
            c_in, size = c_out, size // 2 + 1  # (size + 2 * POOL_PADDING - 2) // 2 + 1
        self.features = nn.Sequential(*blocks)
        self.flat_dim = c_in * size * size  # 256 * 3 * 3 = 2304 for 127x127 images
        self.fc = nn.Sequential(nn.Linear(self.flat_dim, int(fc_dim)), nn.LeakyReLU(LEAKY_SLOPE))
        self.out_dim = int(fc_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, S, S) float -> features: (N, fc_dim) float."""
        x = self.features(images)  # (N, 256, 3, 3) for S = 127
        return self.fc(x.flatten(1))  # (N, 2304) -> (N, fc_dim)

"""The seed report's model: 3D-R2N2 encoder per view -> GRU(128) over views -> Dropout(0.5) -> decoder.

``SeedModel(images: (B, V, 3, 127, 127) float) -> logits: (B, R, R, R) float`` (R = ``resolution``,
32 by default); no sigmoid (train
with BCE-with-logits; apply ``torch.sigmoid`` before :class:`r2n2.evaluation.metrics.VoxelIoU`).

Parameters of the default model (norm none, GRU 128, linear -> 32^3 + Conv3d(1, 1, 3)), by hand:

    encoder  conv 3->96 k7    3*96*49 + 96    =    14,208
             conv 96->128 k3  96*128*9 + 128  =   110,720
             conv 128->256    128*256*9 + 256 =   295,168
             conv 256->256 x3 (256*256*9 + 256) * 3 = 1,770,240
                                           sum = 2,190,336
    GRU      3 * (256*128 + 128*128 + 2*128)  =   148,224
    linear   128*32768 + 32768                = 4,227,072
    conv3d   27 + 1                           =        28
    total                                     = 6,565,660
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from r2n2.models.decoders import GRID, build_decoder
from r2n2.models.encoder import Encoder2D
from r2n2.models.recurrent import HIDDEN_SIZE, RecurrentAggregator

DROPOUT = 0.5  # seed report: dropout 0.5 after the GRU
SEED_PARAMETERS = 6_565_660  # the hand count above, checked in tests/test_models.py


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``module`` (only those with requires_grad if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class SeedModel(nn.Module):
    """Encoder per view -> recurrent aggregator -> explicit dropout -> decoder.

    Every argument is plain (dicts, numbers, strings) so Hydra can instantiate it and checkpoints
    keep plain hparams.

    Args:
        encoder: kwargs for :class:`r2n2.models.encoder.Encoder2D`, e.g. ``{"norm": "batch"}``,
            ``{"channels": [...], "fc_dim": 1024, "init": "kaiming"}``; default ``{}`` (the seed encoder).
        hidden_size: recurrent hidden size; default 128 (seed report).
        cell: "gru" (seed report) or "lstm".
        dropout: dropout probability on the final hidden state; default 0.5 (seed report).
        decoder: ``{"name": "linear_conv3d" | "upconv", **kwargs}``, the kwargs going to the decoder
            class in :mod:`r2n2.models.decoders` (e.g. ``{"name": "upconv", "channels": [64, 32, 16, 8]}``);
            default ``{"name": "linear_conv3d"}`` (the seed decoder).
        resolution: R, the side of the output grid: 32 (default), 64 or 128 (``upconv`` only; the configs
            set it to ``data.resolution``).
    """

    def __init__(
        self,
        encoder: Mapping[str, Any] | None = None,
        hidden_size: int = HIDDEN_SIZE,
        cell: str = "gru",
        dropout: float = DROPOUT,
        decoder: Mapping[str, Any] | None = None,
        resolution: int = GRID,
    ) -> None:
        super().__init__()
        self.encoder = Encoder2D(**dict(encoder or {}))
        self.recurrent = RecurrentAggregator(self.encoder.out_dim, hidden_size, cell)
        self.dropout = nn.Dropout(dropout)  # explicit: nn.GRU's dropout is a no-op with one layer
        self.decoder = build_decoder(hidden_size, resolution=resolution, **dict(decoder or {}))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, V, 3, 127, 127) float -> logits: (B, R, R, R) float."""
        if images.dim() != 5:
            raise ValueError(f"images must be (B, V, C, H, W), got shape {tuple(images.shape)}")
        B, V = images.shape[:2]
        f = self.encoder(images.flatten(0, 1))  # (B*V, F): every view through the same encoder
        f = f.view(B, V, -1)  # (B, V, F)
        h = self.recurrent(f)  # (B, H)
        h = self.dropout(h)  # (B, H)
        return self.decoder(h)  # (B, R, R, R)

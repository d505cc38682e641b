"""The original 3D-R2N2 (Choy et al. 2016): 2D encoder + FC 1024 per view -> 3D convolutional GRU or LSTM
over the views on a 4x4x4x128 grid -> 3D decoder to 32^3.

``R2N2(images: (B, V, 3, 127, 127) float) -> logits: (B, 32, 32, 32) float``; no sigmoid. Trained with
the seed model's BCE head (one logit per voxel) instead of the original's 2-class softmax, so the two
models are compared under the same loss. Parts: :mod:`r2n2.models.r2n2_encoder`,
:mod:`r2n2.models.conv_rnn`, :mod:`r2n2.models.r2n2_decoder`.

Parameters by hand, with conv2(i, o, k) = i*o*k^2 + o and conv3(i, o, k) = i*o*k^3 + o:

    encoder, plain      conv2(3,96,7) + conv2(96,128,3) + conv2(128,256,3) + 3*conv2(256,256,3) = 2,190,336
    encoder, residual   conv2(3,96,7) + conv2(96,96,3)                                    block 1
                        + conv2(96,128,3) + conv2(128,128,3) + conv2(96,128,1)              block 2
                        + conv2(128,256,3) + conv2(256,256,3) + conv2(128,256,1)            block 3
                        + 2*conv2(256,256,3)                                                block 4
                        + 2*conv2(256,256,3) + conv2(256,256,1)                             block 5
                        + 2*conv2(256,256,3)                                    = 4,892,512 block 6
    fc                  256*3*3 * 1024 + 1024                                   = 2,360,320
    one gate            1024 * 128*4^3 + 128*128*3^3 + 128                      = 8,831,104
    3D-Conv-GRU         3 gates                                                 = 26,493,312
    3D-Conv-LSTM        4 gates (3 without the output gate)                     = 35,324,416
    decoder, plain      2*conv3(128,128,3) + conv3(128,64,3) + conv3(64,32,3) + conv3(32,1,3) = 1,162,433
    decoder, residual   4*conv3(128,128,3) + conv3(128,64,3) + conv3(64,64,3) + conv3(128,64,1)
                        + conv3(64,32,3) + 2*conv3(32,32,3) + conv3(32,1,3)     = 2,221,697

    r2n2_gru      (plain, GRU)      4,550,656 + 26,493,312 + 1,162,433 = 32,206,401   (paper: 32.2M)
    r2n2_res_gru  (residual, GRU)   7,252,832 + 26,493,312 + 2,221,697 = 35,967,841   (paper: 36.0M)
    r2n2_lstm     (plain, LSTM)     4,550,656 + 35,324,416 + 1,162,433 = 41,037,505
                  (no output gate: 32,206,401, the same as the GRU net)

The three 1024 x 8192 input maps of the GRU are 78% of r2n2_gru's parameters; the whole 3D-Conv-GRU
(with its hidden-to-hidden convs) is 82%. (The 2-class output would add 865 parameters.)
"""

from __future__ import annotations

import torch
from torch import nn

from r2n2.models.conv_rnn import HIDDEN_CHANNELS, HIDDEN_GRID, build_conv_rnn
from r2n2.models.encoder import init_weights
from r2n2.models.r2n2_decoder import OUTPUT_GRID, R2N2Decoder
from r2n2.models.r2n2_encoder import R2N2Encoder

# the hand counts above, checked in tests/test_r2n2_models.py
R2N2_GRU_PARAMETERS = 32_206_401
R2N2_RES_GRU_PARAMETERS = 35_967_841
R2N2_LSTM_PARAMETERS = 41_037_505


class R2N2(nn.Module):
    """Encoder per view -> 3D conv recurrent unit over the views -> decoder.

    Every argument is plain so Hydra can instantiate it and checkpoints keep plain hparams.

    Args:
        cell: "gru" (3D-Conv-GRU, the paper's choice) or "lstm" (3D-Conv-LSTM).
        residual: False (3D-GRU-3) or True (Res3D-GRU-3, the paper's best: residual encoder and decoder).
        output_gate: LSTM only: True (standard LSTM, h = o . tanh(s)) or False (the paper's 3D-LSTM,
            h = tanh(s)).
        unpool: "nearest" (x2 nearest up-sampling) or "zeros" (the original code's unpooling).
        init: "default" (PyTorch's), "kaiming" or "xavier", see :func:`r2n2.models.encoder.init_weights`.
        resolution: 32 only (the configs pass ``data.resolution``): the original network decodes its
            4^3 hidden grid to 32^3; another value is a ValueError.
    """

    def __init__(
        self,
        cell: str = "gru",
        residual: bool = False,
        output_gate: bool = True,
        unpool: str = "nearest",
        init: str = "default",
        resolution: int = OUTPUT_GRID,
    ) -> None:
        super().__init__()
        if resolution != OUTPUT_GRID:
            raise ValueError(
                f"the original 3D-R2N2 (model=r2n2_*) decodes to {OUTPUT_GRID}^3 only, got resolution {resolution}; "
                f"use data.resolution={OUTPUT_GRID}, or model=seed_gru (its upconv decoder) for finer grids"
            )
        self.encoder = R2N2Encoder(residual)
        self.recurrent = build_conv_rnn(
            cell, output_gate, input_size=self.encoder.out_dim, channels=HIDDEN_CHANNELS, grid=HIDDEN_GRID
        )
        self.decoder = R2N2Decoder(residual, unpool)
        init_weights(self, init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, V, 3, 127, 127) float -> logits: (B, 32, 32, 32) float."""
        if images.dim() != 5:
            raise ValueError(f"images must be (B, V, C, H, W), got shape {tuple(images.shape)}")
        B, V = images.shape[:2]
        f = self.encoder(images.flatten(0, 1)).view(B, V, -1)  # (B*V, 1024) -> (B, V, 1024), one encoder
        h = self.recurrent(f)  # (B, 128, 4, 4, 4): hidden state after the last view
        return self.decoder(h)  # (B, 32, 32, 32)

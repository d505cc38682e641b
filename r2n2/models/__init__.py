"""Model zoo building blocks: 3D-R2N2 image encoder, recurrent view aggregator, voxel decoders, seed model."""

from r2n2.models.decoders import DECODERS, LinearConv3dDecoder, UpConvDecoder, build_decoder
from r2n2.models.encoder import Encoder2D, init_weights
from r2n2.models.recurrent import RecurrentAggregator
from r2n2.models.seed import SeedModel, count_parameters

__all__ = [
    "DECODERS",
    "Encoder2D",
    "LinearConv3dDecoder",
    "RecurrentAggregator",
    "SeedModel",
    "UpConvDecoder",
    "build_decoder",
    "count_parameters",
    "init_weights",
]

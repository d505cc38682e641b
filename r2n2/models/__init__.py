"""Model zoo: the seed model and its parts (image encoder, recurrent view aggregator, voxel decoders),
and the original 3D-R2N2 (R2N2) with its 3D convolutional GRU/LSTM; a launch-bound probe for the
training loop's own cost (r2n2-bench --probe)."""

from r2n2.models.conv_rnn import Conv3dGRU, Conv3dLSTM
from r2n2.models.decoders import DECODERS, LinearConv3dDecoder, UpConvDecoder, build_decoder
from r2n2.models.encoder import Encoder2D, init_weights
from r2n2.models.probe import LaunchProbe
from r2n2.models.r2n2 import R2N2
from r2n2.models.r2n2_decoder import R2N2Decoder
from r2n2.models.r2n2_encoder import R2N2Encoder
from r2n2.models.recurrent import RecurrentAggregator
from r2n2.models.seed import SeedModel, count_parameters

__all__ = [
    "Conv3dGRU",
    "Conv3dLSTM",
    "DECODERS",
    "Encoder2D",
    "LaunchProbe",
    "LinearConv3dDecoder",
    "R2N2",
    "R2N2Decoder",
    "R2N2Encoder",
    "RecurrentAggregator",
    "SeedModel",
    "UpConvDecoder",
    "build_decoder",
    "count_parameters",
    "init_weights",
]

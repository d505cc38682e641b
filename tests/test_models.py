"""Model zoo: shapes, gradients, the hand parameter count, and what each config switch changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from r2n2.models import (
    R2N2,
    Encoder2D,
    LinearConv3dDecoder,
    RecurrentAggregator,
    SeedModel,
    UpConvDecoder,
    count_parameters,
)
from r2n2.models.seed import SEED_PARAMETERS

S = 127  # 3D-R2N2 input size


def images(b: int, v: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, v, 3, S, S, generator=torch.Generator().manual_seed(seed))


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out  # Conv2d weight + bias


def gru_params(f: int, h: int, gates: int = 3) -> int:
    return gates * (f * h + h * h + 2 * h)  # weight_ih, weight_hh, bias_ih, bias_hh per gate


# --- shapes and gradients -------------------------------------------------------------------------------


def test_encoder_spatial_sizes():
    enc = Encoder2D()
    sizes = []
    for m in enc.features:
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    out = enc(torch.randn(2, 3, S, S))
    assert sizes == [63, 31, 15, 7, 3, 1]
    assert out.shape == (2, 256) and enc.out_dim == 256


@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize("decoder", ["linear_conv3d", "upconv"])
def test_output_shape(views, decoder):
    model = SeedModel(decoder={"name": decoder}).eval()
    with torch.no_grad():
        assert model(images(2, views)).shape == (2, 32, 32, 32)


def test_forward_backward():
    torch.manual_seed(0)
    model = SeedModel(encoder={"norm": "batch"}, decoder={"name": "upconv"})
    x, y = images(2, 2), (torch.rand(2, 32, 32, 32) < 0.3).float()
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert torch.isfinite(loss) and not missing


def test_samples_do_not_mix():
    # each sample's output depends only on its own views: catches a (B, V) <-> (B*V) reshape mix-up
    model = SeedModel().eval()
    x = images(3, 2)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_view_order_reaches_the_recurrent_part():
    model = SeedModel().eval()
    x = images(1, 3)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x.flip(1)))


def test_non_5d_input_raises():
    with pytest.raises(ValueError, match="B, V, C, H, W"):
        SeedModel()(torch.randn(2, 3, S, S))


# --- parameter counts -------------------------------------------------------------------------------------


def test_default_parameter_count_matches_the_formula():
    encoder = conv_params(3, 96, 7) + conv_params(96, 128, 3) + conv_params(128, 256, 3) + 3 * conv_params(256, 256, 3)
    recurrent = gru_params(256, 128)
    linear = 128 * 32**3 + 32**3
    conv3d = 27 + 1
    model = SeedModel()
    assert count_parameters(model.encoder) == encoder == 2_190_336
    assert count_parameters(model.recurrent) == recurrent == 148_224
    assert count_parameters(model.decoder) == linear + conv3d
    assert count_parameters(model) == encoder + recurrent + linear + conv3d == SEED_PARAMETERS == 6_565_660


def test_count_parameters_trainable_only():
    model = SeedModel()
    model.encoder.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == SEED_PARAMETERS - 2_190_336


# --- config switches -----------------------------------------------------------------------------------------


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_norm_batch_adds_batchnorm():
    plain, batch = SeedModel(), SeedModel(encoder={"norm": "batch"})
    assert count(plain, nn.BatchNorm2d) == 0 and count(batch, nn.BatchNorm2d) == 6
    # conv biases (96 + 128 + 4 * 256) go, BatchNorm weight + bias (2 per channel) come
    assert count_parameters(batch) - count_parameters(plain) == 1248


def test_cell_lstm():
    gru, lstm = SeedModel(), SeedModel(cell="lstm")
    assert gru.recurrent.cell == "gru" and lstm.recurrent.cell == "lstm"
    assert count_parameters(gru.recurrent) == gru_params(256, 128, gates=3)
    assert count_parameters(lstm.recurrent) == gru_params(256, 128, gates=4)
    with torch.no_grad():
        assert lstm.eval()(images(2, 3)).shape == (2, 32, 32, 32)


def test_hidden_size():
    model = SeedModel(hidden_size=64)
    assert model.recurrent.hidden_size == 64
    assert model.decoder.fc.in_features == 64
    assert count_parameters(model.recurrent) == gru_params(256, 64)


def test_upconv_is_smaller():
    linear, upconv = SeedModel(), SeedModel(decoder={"name": "upconv"})
    assert isinstance(linear.decoder, LinearConv3dDecoder) and isinstance(upconv.decoder, UpConvDecoder)
    assert count_parameters(upconv.decoder) < count_parameters(linear.decoder) / 2
    assert count(upconv, nn.ConvTranspose3d) == 3 and count(upconv, nn.BatchNorm3d) == 3


def test_decoder_channels():
    lin = SeedModel(decoder={"name": "linear_conv3d", "channels": 2})
    assert lin.decoder.conv.in_channels == 2 and lin.decoder.fc.out_features == 2 * 32**3
    up = UpConvDecoder(128, channels=(32, 16, 8, 4))
    assert [m.out_channels for m in up.modules() if isinstance(m, nn.ConvTranspose3d)] == [16, 8, 4]
    assert up(torch.randn(2, 128)).shape == (2, 32, 32, 32)


def test_encoder_fc_dim_and_channels():
    enc = Encoder2D(fc_dim=1024)  # 3D-R2N2's fully connected 1024 after flatten
    assert enc.out_dim == 1024 and enc(torch.randn(1, 3, S, S)).shape == (1, 1024)
    assert count_parameters(enc) == 2_190_336 + 256 * 1024 + 1024
    model = SeedModel(encoder={"fc_dim": 1024})
    assert model.recurrent.rnn.weight_ih_l0.shape == (3 * 128, 1024)
    small = Encoder2D(channels=[8, 16, 16, 16, 16, 32])
    assert small.out_dim == 32 and small(torch.randn(1, 3, S, S)).shape == (1, 32)


def test_init_kaiming_zeroes_biases():
    torch.manual_seed(0)
    default, kaiming = Encoder2D(), Encoder2D(init="kaiming")
    conv_d, conv_k = default.features[0], kaiming.features[0]
    assert conv_d.bias.abs().sum() > 0 and conv_k.bias.abs().sum() == 0
    # kaiming-normal std for LeakyReLU(0.01) with fan_in 3*7*7: sqrt(2 / (1 + 0.01^2) / 147) = 0.1166
    assert conv_k.weight.std().item() == pytest.approx(0.1166, rel=0.1)


def test_dropout_applied():
    x = images(2, 1)
    model = SeedModel(dropout=0.5)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))  # dropout draws a new mask each call
        model.eval()
        torch.testing.assert_close(model(x), model(x))
    no_dropout = SeedModel(dropout=0.0).train()  # train mode alone is deterministic without dropout
    with torch.no_grad():
        torch.testing.assert_close(no_dropout(x), no_dropout(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell": "rnn"},
        {"encoder": {"norm": "layer"}},
        {"encoder": {"init": "orthogonal"}},
        {"decoder": {"name": "mlp"}},
    ],
)
def test_unknown_switch_values_raise(kwargs):
    with pytest.raises(ValueError):
        SeedModel(**kwargs)


def _torch_rnn(agg: RecurrentAggregator) -> nn.RNNBase:
    """nn.GRU / nn.LSTM holding ``agg``'s parameters, loaded by its state_dict keys."""
    rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[agg.cell](agg.rnn.weight_ih_l0.shape[1], agg.hidden_size, batch_first=True)
    rnn.load_state_dict({k.removeprefix("rnn."): v for k, v in agg.state_dict().items()})
    return rnn


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_equals_torch_rnn_forward_and_backward(cell):
    """The explicit cell loop is nn.GRU / nn.LSTM: the last hidden state and every gradient agree."""
    agg = RecurrentAggregator(5, hidden_size=4, cell=cell)
    rnn = _torch_rnn(agg)
    x = torch.randn(2, 3, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, _ = rnn(x2)
    got = agg(x)
    torch.testing.assert_close(got, out[:, -1])
    got.square().sum().backward()
    out[:, -1].square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for name, p in agg.rnn.named_parameters():
        torch.testing.assert_close(p.grad, getattr(rnn, name).grad, msg=name)


def test_recurrent_initialises_and_loads_like_torch_rnn():
    """Same seed, same initial weights as nn.GRU; a state_dict of the old nn.GRU module loads as is."""
    torch.manual_seed(0)
    agg = RecurrentAggregator(5, hidden_size=4, cell="gru")
    torch.manual_seed(0)
    rnn = nn.GRU(5, 4, num_layers=1, batch_first=True)
    old = {f"rnn.{k}": v for k, v in rnn.state_dict().items()}  # the keys checkpoints have always had
    assert old.keys() == agg.state_dict().keys()
    for k, v in old.items():
        torch.testing.assert_close(agg.state_dict()[k], v, rtol=0, atol=0)
    fresh = RecurrentAggregator(5, hidden_size=4, cell="gru")
    fresh.load_state_dict(old)
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(fresh(x), rnn(x)[0][:, -1])


@pytest.mark.slow  # ~50 s of Dynamo/AOT tracing on a busy 2-core machine
def test_whole_seed_model_compiles_into_one_graph():
    """torch.compile(fullgraph=True) captures the network, recurrence included, forward and backward
    (aot_eager: Dynamo's capture and AOTAutograd without generating kernels), with equal results.
    (Narrow channels keep it quick; the graph is the seed model's: BatchNorm encoder, GRU, decoder.)"""
    torch.manual_seed(0)
    model = SeedModel(encoder={"norm": "batch", "channels": [8, 8, 8, 8, 8, 16]}, hidden_size=16, dropout=0.0).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = images(2, 3)
    want = model(x)
    got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    got.sum().backward()  # the backward graph is captured too


def test_lstm_aggregator_compiles_into_one_graph():
    agg = RecurrentAggregator(5, hidden_size=4, cell="lstm")
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(torch.compile(agg, fullgraph=True, backend="aot_eager")(x), agg(x))


def test_recurrent_returns_last_hidden_state():
    """A view appended at the end changes the output; the state after V views does not depend on
    views that come later (the output is the last step's hidden state)."""
    agg = RecurrentAggregator(5, hidden_size=4, cell="gru")
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(agg(x[:, :2]), _torch_rnn(agg)(x)[0][:, 1])
    assert not torch.allclose(agg(x), agg(x[:, :2]))


def test_compile_setting_takes_a_torch_compile_mode_and_names_a_wrong_one():
    """module.compile: false leaves the network eager; true and a mode ("reduce-overhead" = CUDA graphs)
    compile it in place, keeping its state_dict keys, and the mode reaches the compiler (Inductor's
    config: CUDA graphs on for reduce-overhead only); anything else is an error naming the value."""
    from r2n2.train.module import compile_network

    net = RecurrentAggregator(5, hidden_size=4, cell="gru")
    keys = list(net.state_dict())
    assert compile_network(net, False) is False and net._compiled_call_impl is None
    assert compile_network(net, "reduce-overhead") is True and net._compiled_call_impl is not None
    assert list(net.state_dict()) == keys
    assert net._compiled_call_impl.get_compiler_config()["triton.cudagraphs"] is True
    plain = RecurrentAggregator(5, hidden_size=4, cell="gru")
    assert compile_network(plain, True) is True
    assert plain._compiled_call_impl.get_compiler_config()["triton.cudagraphs"] is False
    with pytest.raises(ValueError, match=r"module.compile='fast'.*reduce-overhead"):
        compile_network(RecurrentAggregator(5, hidden_size=4, cell="gru"), "fast")


# --- resolution (data.resolution) -----------------------------------------------------------------

# the default model's decoder (upconv, 32^3) as old checkpoints hold it: name -> shape
UPCONV_32_STATE = {
    "fc.weight": (4096, 128), "fc.bias": (4096,),
    "net.1.weight": (64, 32, 4, 4, 4), "net.2.weight": (32,), "net.2.bias": (32,),
    "net.4.weight": (32, 16, 4, 4, 4), "net.5.weight": (16,), "net.5.bias": (16,),
    "net.7.weight": (16, 8, 4, 4, 4), "net.8.weight": (8,), "net.8.bias": (8,),
    "net.10.weight": (1, 8, 3, 3, 3), "net.10.bias": (1,),
}  # fmt: skip


def test_default_decoder_state_is_unchanged_so_old_checkpoints_load():
    state = SeedModel(decoder={"name": "upconv"}).decoder.state_dict()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith(buffers)}
    assert shapes == UPCONV_32_STATE
    torch.manual_seed(0)
    a = SeedModel(decoder={"name": "upconv"}).state_dict()
    torch.manual_seed(0)
    b = SeedModel(decoder={"name": "upconv"}, resolution=32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same weights at the same seed


@pytest.mark.parametrize("resolution, stages", [(64, 4), (128, 5)])
def test_upconv_adds_a_doubling_stage_per_resolution(resolution, stages):
    net = SeedModel(decoder={"name": "upconv"}, resolution=resolution).eval()
    ups = [m for m in net.decoder.net if isinstance(m, nn.ConvTranspose3d)]
    assert len(ups) == stages and net.decoder.grid == resolution
    with torch.no_grad():
        assert net(torch.randn(1, 2, 3, 127, 127)).shape == (1, resolution, resolution, resolution)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SeedModel(resolution=64), "linear_conv3d decoder is the seed report.s 32\\^3 design"),
        (lambda: R2N2(resolution=64), "original 3D-R2N2 .* 32\\^3 only, got resolution 64"),
        (lambda: SeedModel(decoder={"name": "upconv", "channels": [64, 32, 16, 8]}, resolution=64), "needs 4"),
        (lambda: SeedModel(decoder={"name": "upconv"}, resolution=48), "resolution 48"),
    ],
)
def test_a_resolution_a_network_cannot_make_is_refused_clearly(build, message):
    with pytest.raises(ValueError, match=message):
        build()

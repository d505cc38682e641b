"""GRU vs LSTM and the original 3D-R2N2: every conf/model config builds through Hydra, runs forward and
backward, has the hand-counted parameters, and its recurrent unit is really recurrent over the views."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from r2n2.models import R2N2, Conv3dGRU, Conv3dLSTM, R2N2Encoder, SeedModel, count_parameters
from r2n2.models.r2n2 import R2N2_GRU_PARAMETERS, R2N2_LSTM_PARAMETERS, R2N2_RES_GRU_PARAMETERS
from r2n2.models.r2n2_decoder import Unpool3d
from r2n2.train.network import build_network

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
MODELS = ["seed_gru", "seed_lstm", "r2n2_gru", "r2n2_res_gru", "r2n2_lstm"]
S = 127  # 3D-R2N2 input size


@cache
def build(name: str) -> nn.Module:
    """The network of conf/model/<name>.yaml, instantiated by Hydra as training does (cached: tests reset grads)."""
    torch.manual_seed(0)
    return build_network(OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")))


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    build.cache_clear()  # about 0.5 GB of weights held by the cached models


def images(b: int, v: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, v, 3, S, S, generator=torch.Generator().manual_seed(seed))


def conv2(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def conv3(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k**3 + c_out


def hidden_to_hidden_weights(model: nn.Module) -> set[str]:
    """Names of the weights that act on the previous hidden state (no gradient when it is h0 = 0)."""
    if isinstance(model, SeedModel):
        return {"recurrent.rnn.weight_hh_l0"}
    return {f"recurrent.{n}.weight" for n, m in model.recurrent.named_modules() if isinstance(m, nn.Conv3d)}


def test_configs_build_the_named_classes():
    kinds = {name: type(build(name)) for name in MODELS}
    assert kinds == {
        "seed_gru": SeedModel,
        "seed_lstm": SeedModel,
        "r2n2_gru": R2N2,
        "r2n2_res_gru": R2N2,
        "r2n2_lstm": R2N2,
    }
    # the seed models run their recurrence as an explicit cell loop over nn.LSTM / nn.GRU parameters
    assert build("seed_lstm").recurrent.cell == "lstm" and build("seed_gru").recurrent.cell == "gru"
    assert "weight_hh_l0" in dict(build("seed_lstm").recurrent.rnn.named_parameters())
    assert isinstance(build("r2n2_gru").recurrent, Conv3dGRU) and isinstance(build("r2n2_res_gru").recurrent, Conv3dGRU)
    assert isinstance(build("r2n2_lstm").recurrent, Conv3dLSTM)


def test_seed_lstm_differs_from_seed_gru_only_in_the_cell():
    gru, lstm = (OmegaConf.to_container(OmegaConf.load(CONF / f"{n}.yaml")) for n in ("seed_gru", "seed_lstm"))
    assert lstm.pop("cell") == "lstm" and gru.pop("cell") == "gru" and gru == lstm


# --- shapes and gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name, views):
    model = build(name).train()
    model.zero_grad(set_to_none=True)
    y = (torch.rand(2, 32, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    logits = model(images(2, views))
    assert logits.shape == (2, 32, 32, 32)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    # one view: the hidden-to-hidden weights only ever see h0 = 0, so exactly they get no gradient
    assert no_grad == (hidden_to_hidden_weights(model) if views == 1 else set())
    model.zero_grad(set_to_none=True)


# --- parameter counts -------------------------------------------------------------------------------------


def test_parameter_counts_match_the_hand_formula():
    encoder = conv2(3, 96, 7) + conv2(96, 128, 3) + conv2(128, 256, 3) + 3 * conv2(256, 256, 3)
    res_encoder = (
        conv2(3, 96, 7)
        + conv2(96, 96, 3)
        + conv2(96, 128, 3)
        + conv2(128, 128, 3)
        + conv2(96, 128, 1)
        + conv2(128, 256, 3)
        + conv2(256, 256, 3)
        + conv2(128, 256, 1)
        + 2 * conv2(256, 256, 3)
        + 2 * conv2(256, 256, 3)
        + conv2(256, 256, 1)
        + 2 * conv2(256, 256, 3)
    )
    fc = 256 * 3 * 3 * 1024 + 1024  # the original's padded pooling leaves 3x3 of the 127x127 image
    gate = 1024 * 128 * 4**3 + 128 * 128 * 3**3 + 128  # FC map (no bias) + 3x3x3 conv + per-channel bias
    decoder = 2 * conv3(128, 128, 3) + conv3(128, 64, 3) + conv3(64, 32, 3) + conv3(32, 1, 3)
    res_decoder = (
        4 * conv3(128, 128, 3)
        + conv3(128, 64, 3)
        + conv3(64, 64, 3)
        + conv3(128, 64, 1)
        + conv3(64, 32, 3)
        + 2 * conv3(32, 32, 3)
        + conv3(32, 1, 3)
    )
    gru, res_gru, lstm = build("r2n2_gru"), build("r2n2_res_gru"), build("r2n2_lstm")
    assert count_parameters(gru.encoder) == count_parameters(lstm.encoder) == encoder + fc
    assert count_parameters(res_gru.encoder) == res_encoder + fc
    assert count_parameters(gru.recurrent) == count_parameters(res_gru.recurrent) == 3 * gate
    assert count_parameters(lstm.recurrent) == 4 * gate
    assert count_parameters(gru.decoder) == count_parameters(lstm.decoder) == decoder
    assert count_parameters(res_gru.decoder) == res_decoder
    assert count_parameters(gru) == encoder + fc + 3 * gate + decoder == R2N2_GRU_PARAMETERS
    assert count_parameters(res_gru) == res_encoder + fc + 3 * gate + res_decoder == R2N2_RES_GRU_PARAMETERS
    assert count_parameters(lstm) == encoder + fc + 4 * gate + decoder == R2N2_LSTM_PARAMETERS
    # REFERENCE.md: about 32.2M and 36.0M parameters; the three 1024 x 8192 input maps dominate
    assert count_parameters(gru) == pytest.approx(32.2e6, rel=0.02)
    assert count_parameters(res_gru) == pytest.approx(36.0e6, rel=0.02)
    assert 3 * 1024 * 8192 / count_parameters(gru) == pytest.approx(0.78, abs=0.01)
    assert 3 * gate / count_parameters(gru) == pytest.approx(0.82, abs=0.01)


def test_lstm_and_gru_differ_by_the_extra_gate():
    gate = 1024 * 8192 + 128 * 128 * 27 + 128
    assert count_parameters(build("r2n2_lstm")) - count_parameters(build("r2n2_gru")) == gate
    # the paper's 3D-LSTM (no output gate) has 3 maps, as many parameters as the GRU
    assert count_parameters(Conv3dLSTM(output_gate=False)) == count_parameters(Conv3dGRU()) == 3 * gate
    # nn.LSTM has 4 gates to nn.GRU's 3: one more (256 x 128 + 128 x 128 + 2 x 128)
    assert count_parameters(build("seed_lstm")) - count_parameters(build("seed_gru")) == 256 * 128 + 128 * 128 + 2 * 128


# --- the recurrent units are recurrent ------------------------------------------------------------------------

CELL_KW = {"input_size": 16, "channels": 8, "grid": 4}  # small cells: the same code at a fraction of the cost


def small_cell(cell: str) -> nn.Module:
    torch.manual_seed(0)
    return Conv3dGRU(**CELL_KW) if cell == "gru" else Conv3dLSTM(**CELL_KW)


def test_gru_first_step_starts_from_zero():
    cell = small_cell("gru")
    x = torch.randn(2, 1, 16)
    wx_u, _, wx_h = (cell.fc(x[:, 0]).view(2, 3 * 8, 4, 4, 4)).chunk(3, dim=1)
    b_u = cell.conv_ur.bias[:8].view(1, 8, 1, 1, 1)
    b_h = cell.conv_h.bias.view(1, 8, 1, 1, 1)
    u = torch.sigmoid(wx_u + b_u)  # U_u * 0 = 0: only the bias of the hidden conv is left
    with torch.no_grad():
        torch.testing.assert_close(cell(x), (1 - u) * torch.tanh(wx_h + b_h))


def test_lstm_first_step_starts_from_zero():
    cell = small_cell("lstm")
    x = torch.randn(2, 1, 16)
    z = (cell.fc(x[:, 0]).view(2, 4 * 8, 4, 4, 4) + cell.conv_gates.bias.view(1, -1, 1, 1, 1)).chunk(4, dim=1)
    s = torch.sigmoid(z[0]) * torch.tanh(z[3])  # f . s0 = 0
    with torch.no_grad():
        torch.testing.assert_close(cell(x), torch.sigmoid(z[2]) * torch.tanh(s))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cell_depends_on_every_view_and_their_order(cell):
    rnn = small_cell(cell)
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        out = rnn(x)
        assert out.shape == (3, 8, 4, 4, 4)
        for t in range(4):
            other = x.clone()
            other[:, t] += 1.0
            assert not torch.allclose(rnn(other), out), f"view {t} does not reach the output"
        assert not torch.allclose(rnn(x.flip(1)), out)
        # each sample's state depends only on its own views
        torch.testing.assert_close(torch.cat([rnn(x[i : i + 1]) for i in range(3)]), out)


@pytest.mark.parametrize("name", ["seed_gru", "seed_lstm", "r2n2_gru", "r2n2_lstm"])  # r2n2_res_gru: r2n2_gru's cell
def test_model_output_depends_on_every_view_and_their_order(name):
    model = build(name).eval()
    x = images(1, 3)
    batch = [x, x.flip(1)]  # one forward pass for all variants: original, reversed, each view changed
    for t in range(3):
        other = x.clone()
        other[:, t] = images(1, 1, seed=10 + t)[:, 0]
        batch.append(other)
    with torch.no_grad():
        out = model(torch.cat(batch))
    for i in range(1, len(batch)):
        assert not torch.allclose(out[i], out[0], atol=1e-6), f"variant {i} gives the same output"


# --- parts and switches --------------------------------------------------------------------------------------


def test_encoder_pools_like_the_original():
    # zero padding 1 then 2x2 pooling: 127 -> 64 -> 33 -> 17 -> 9 -> 5 -> 3 (lib/layers.py PoolLayer)
    enc = R2N2Encoder()
    sizes = []
    for m in enc.features.modules():
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    with torch.no_grad():
        assert enc(torch.randn(1, 3, S, S)).shape == (1, 1024)
    assert sizes == [64, 33, 17, 9, 5, 3] and enc.flat_dim == 2304


def test_unpool_modes():
    x = torch.arange(8.0).view(1, 1, 2, 2, 2)
    nearest, zeros = Unpool3d("nearest")(x), Unpool3d("zeros")(x)
    assert nearest.shape == zeros.shape == (1, 1, 4, 4, 4)
    torch.testing.assert_close(nearest[..., ::2, ::2, ::2], x)
    torch.testing.assert_close(nearest[..., 1::2, 1::2, 1::2], x)
    torch.testing.assert_close(zeros[..., ::2, ::2, ::2], x)
    assert zeros.sum() == x.sum() and (zeros[..., 1::2, :, :] == 0).all()


def test_residual_switch_adds_the_residual_blocks():
    def n_convs(model: nn.Module, kind: type, k: int) -> int:
        return sum(isinstance(m, kind) and m.kernel_size[0] == k for m in model.modules())

    plain, res = build("r2n2_gru"), build("r2n2_res_gru")
    assert n_convs(plain.encoder, nn.Conv2d, 3) == 5 and n_convs(res.encoder, nn.Conv2d, 3) == 11
    assert n_convs(plain.encoder, nn.Conv2d, 1) == 0 and n_convs(res.encoder, nn.Conv2d, 1) == 3
    assert n_convs(plain.decoder, nn.Conv3d, 3) == 5 and n_convs(res.decoder, nn.Conv3d, 3) == 10
    assert n_convs(res.decoder, nn.Conv3d, 1) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"cell": "rnn"}, {"cell": "gru", "output_gate": False}, {"unpool": "bilinear"}, {"init": "orthogonal"}],
)
def test_unknown_switch_values_raise(kwargs):
    with pytest.raises(ValueError):
        R2N2(**kwargs)


def test_non_5d_input_raises():
    with pytest.raises(ValueError, match="B, V, C, H, W"):
        build("r2n2_gru")(torch.randn(2, 3, S, S))

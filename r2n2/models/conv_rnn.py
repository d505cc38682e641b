"""3D-R2N2's 3D convolutional recurrent units: the hidden state is a grid (B, C, G, G, G), C=128, G=4.

Every gate has the form of the original code's ``FCConv3DLayer`` (lib/layers.py):

    W x + U * h + b

W: a fully connected map from the per-view feature (F = 1024) to C * G^3 = 8192 values, no bias;
U: a 3x3x3 convolution C -> C on the hidden grid ('same' padding), no bias of its own;
b: one bias per channel (here the convolution's bias).
Parameters per gate: F * C * G^3 + C * C * 27 + C = 8,831,104 at the defaults.

W x does not depend on the hidden state, so it is computed for every view in one matrix product; the
loop over views only runs the 3D convolutions. The stacked gates are one Linear and as few Conv3d as
the equations allow: the same parameters and function as separate per-gate layers.
The first hidden state (and LSTM cell state) is zero, as in the original (theano.scan outputs_info).
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_SIZE = 1024  # 3D-R2N2: n_fc_filters = [1024], the encoder's fully connected layer
HIDDEN_CHANNELS = 128  # 3D-R2N2: n_deconvfilter[0] = 128 channels of the hidden grid
HIDDEN_GRID = 4  # 3D-R2N2: n_gru_vox = 4, a 4x4x4 grid
KERNEL = 3  # 3D-R2N2: (128, 128, 3, 3, 3) filters of the hidden-to-hidden convolutions


class _Conv3dRecurrent(nn.Module):
    """Shared part: the stacked input maps W of ``n_gates`` gates and the loop over views.

    ``forward(x: (B, V, F) float, views in order) -> h: (B, C, G, G, G) float``, the hidden state after
    the last view. Subclasses define ``init_state``, ``step`` and ``hidden``.
    """

    def __init__(self, n_gates: int, input_size: int, channels: int, grid: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd ('same' padding), got {kernel_size}")
        self.n_gates, self.channels, self.grid = n_gates, int(channels), int(grid)
        self.padding = kernel_size // 2
        # W of every gate, stacked: F -> n_gates * C * G^3, no bias (FCConv3DLayer's Wx)
        self.fc = nn.Linear(input_size, n_gates * self.channels * self.grid**3, bias=False)

    def conv(self, c_out: int, kernel_size: int) -> nn.Conv3d:
        """U of one or more gates: C -> c_out; its bias is the gates' per-channel b."""
        return nn.Conv3d(self.channels, c_out, kernel_size, padding=self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, V, F) float -> h: (B, C, G, G, G) float after the last of the V views."""
        if x.dim() != 3:
            raise ValueError(f"x must be (B, V, F), got shape {tuple(x.shape)}")
        B, V, _ = x.shape
        if V < 1:
            raise ValueError("x has no views")
        g = self.grid
        wx = self.fc(x).view(B, V, self.n_gates * self.channels, g, g, g)  # W x of every view and gate
        state = self.init_state(wx[:, 0])
        for t in range(V):
            state = self.step(wx[:, t], state)  # wx[:, t]: (B, n_gates * C, G, G, G)
        return self.hidden(state)

    def zeros(self, like: torch.Tensor) -> torch.Tensor:
        """A zero grid (B, C, G, G, G) with ``like``'s batch size, dtype and device."""
        g = self.grid
        return like.new_zeros(like.shape[0], self.channels, g, g, g)


class Conv3dGRU(_Conv3dRecurrent):
    """3D-Conv-GRU (3D-R2N2 models/gru_net.py), 3 gates:

        u  = sigmoid(W_u x + U_u * h + b_u)             update gate
        r  = sigmoid(W_r x + U_r * h + b_r)             reset gate
        h' = u . h + (1 - u) . tanh(W_h x + U_h * (r . h) + b_h)

    (the original's ``gru_out = update_gate * prev_s + (1 - update_gate) * tanh_t_x_rs``).
    ``forward(x: (B, V, F)) -> h: (B, C, G, G, G)``.
    Parameters: 3 * (F * C * G^3 + C * C * k^3 + C).
    """

    def __init__(
        self,
        input_size: int = FEATURE_SIZE,
        channels: int = HIDDEN_CHANNELS,
        grid: int = HIDDEN_GRID,
        kernel_size: int = KERNEL,
    ) -> None:
        super().__init__(3, input_size, channels, grid, kernel_size)
        self.conv_ur = self.conv(2 * self.channels, kernel_size)  # U_u, U_r (and b_u, b_r) on h
        self.conv_h = self.conv(self.channels, kernel_size)  # U_h (and b_h) on r . h

    def init_state(self, wx: torch.Tensor) -> torch.Tensor:
        return self.zeros(wx)  # h0 = 0

    def step(self, wx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """wx: (B, 3C, G, G, G) = [W_u x, W_r x, W_h x]; h: (B, C, G, G, G) -> h': (B, C, G, G, G)."""
        wx_u, wx_r, wx_h = wx.chunk(3, dim=1)
        uh_u, uh_r = self.conv_ur(h).chunk(2, dim=1)
        u = torch.sigmoid(wx_u + uh_u)
        r = torch.sigmoid(wx_r + uh_r)
        candidate = torch.tanh(wx_h + self.conv_h(r * h))
        return u * h + (1 - u) * candidate

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        return h


class Conv3dLSTM(_Conv3dRecurrent):
    """3D-Conv-LSTM: input, forget and (optional) output gates and a cell state s, all (B, C, G, G, G):

        i  = sigmoid(W_i x + U_i * h + b_i),  f = sigmoid(W_f x + U_f * h + b_f)
        o  = sigmoid(W_o x + U_o * h + b_o)
        s' = f . s + i . tanh(W_s x + U_s * h + b_s)
        h' = o . tanh(s')            (output_gate=True: the standard LSTM, like the seed model's nn.LSTM)
        h' = tanh(s')                (output_gate=False: the paper's 3D-LSTM, models/mv_lstm_net.py,
                                      which has no output gate)

    ``forward(x: (B, V, F)) -> h: (B, C, G, G, G)`` (the hidden state, not the cell state).
    Parameters: n * (F * C * G^3 + C * C * k^3 + C), n = 4 with the output gate, else 3 (as the GRU).
    """

    def __init__(
        self,
        input_size: int = FEATURE_SIZE,
        channels: int = HIDDEN_CHANNELS,
        grid: int = HIDDEN_GRID,
        kernel_size: int = KERNEL,
        output_gate: bool = True,
    ) -> None:
        self.output_gate = bool(output_gate)
        n_gates = 4 if self.output_gate else 3
        super().__init__(n_gates, input_size, channels, grid, kernel_size)
        self.conv_gates = self.conv(n_gates * self.channels, kernel_size)  # U and b of every gate, on h

    def init_state(self, wx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.zeros(wx), self.zeros(wx)  # (h0, s0) = (0, 0)

    def step(self, wx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """wx: (B, nC, G, G, G) = [W_i x, W_f x, (W_o x,) W_s x]; state (h, s) -> (h', s'), each (B, C, G, G, G)."""
        h, s = state
        z = (wx + self.conv_gates(h)).chunk(self.n_gates, dim=1)
        i, f = torch.sigmoid(z[0]), torch.sigmoid(z[1])
        s = f * s + i * torch.tanh(z[-1])
        h = torch.sigmoid(z[2]) * torch.tanh(s) if self.output_gate else torch.tanh(s)
        return h, s

    def hidden(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return state[0]


CELLS = {"gru": Conv3dGRU, "lstm": Conv3dLSTM}


def build_conv_rnn(cell: str = "gru", output_gate: bool = True, **kwargs) -> _Conv3dRecurrent:
    """``Conv3dGRU`` ("gru") or ``Conv3dLSTM`` ("lstm"); ``output_gate`` is an LSTM switch only."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
    if cell == "lstm":
        return Conv3dLSTM(output_gate=output_gate, **kwargs)
    if not output_gate:
        raise ValueError("output_gate=False is an LSTM switch; the GRU has no output gate")
    return Conv3dGRU(**kwargs)

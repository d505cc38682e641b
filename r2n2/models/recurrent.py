"""Sequence aggregator over views: a one-layer GRU or LSTM; the final hidden state summarises the views.

The seed report's recurrent part is a GRU of hidden size 128 over the per-view encoder features.
(3D-R2N2's own 3D-Conv-GRU, a 4x4x4x128 hidden grid, is not this module.)

Dropout is not applied here: with one layer, nn.GRU/nn.LSTM's ``dropout`` argument does nothing
(it acts only between stacked layers), so the model applies an explicit nn.Dropout to the output.

The recurrence is an explicit loop over the views with nn.GRU / nn.LSTM's own parameters and
equations (PyTorch's documented gate order: r, z, n for the GRU; i, f, g, o for the LSTM), so
``torch.compile`` captures the whole network in one graph (the cuDNN RNN kernel breaks it, and
CUDA-graph capture failed on it), while checkpoints keep nn.GRU's keys (``rnn.weight_ih_l0``, ...).
The input projection of every view is one matrix product; the loop only does the hidden one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN_SIZE = 128  # seed report: GRU hidden size 128
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class _CellWeights(nn.Module):
    """The parameters of a one-layer nn.GRU / nn.LSTM under its own names (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``), without the module Dynamo refuses to trace.
    Taken from a freshly built ``rnn``, so the initialisation is nn.GRU's / nn.LSTM's exactly."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            setattr(self, name, nn.Parameter(getattr(rnn, name).detach().clone()))


class RecurrentAggregator(nn.Module):
    """``forward(x: (B, V, F) float) -> (B, H) float``, the hidden state after the last view.

    Args:
        input_size: F, the per-view feature size.
        hidden_size: H; default 128 (seed report).
        cell: "gru" (seed report) or "lstm" (the report's future work: compare both).
    """

    def __init__(self, input_size: int, hidden_size: int = HIDDEN_SIZE, cell: str = "gru") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        self.cell = cell
        self.hidden_size = int(hidden_size)
        self.rnn = _CellWeights(CELLS[cell](input_size, self.hidden_size, num_layers=1, batch_first=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, V, F) float, views in order -> (B, H) float, the hidden state after the last view
        (the initial hidden and cell states are zero, as nn.GRU / nn.LSTM's default)."""
        r = self.rnn
        gi = F.linear(x, r.weight_ih_l0, r.bias_ih_l0)  # (B, V, G*H): input part of every gate and view
        h = gi.new_zeros(x.shape[0], self.hidden_size)  # (B, H)
        c = h
        for t in range(x.shape[1]):
            gh = F.linear(h, r.weight_hh_l0, r.bias_hh_l0)  # (B, G*H)
            if self.cell == "gru":
                i_r, i_z, i_n = gi[:, t].chunk(3, 1)
                h_r, h_z, h_n = gh.chunk(3, 1)
                reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
                candidate = torch.tanh(i_n + reset * h_n)
                h = (1 - update) * candidate + update * h
            else:
                i, f, g, o = (gi[:, t] + gh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
        return h

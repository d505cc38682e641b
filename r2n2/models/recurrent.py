"""Sequence aggregator over views: a one-layer GRU or LSTM; the final hidden state summarises the views.

The seed report's recurrent part is a GRU of hidden size 128 over the per-view encoder features.
(3D-R2N2's own 3D-Conv-GRU, a 4x4x4x128 hidden grid, is not this module.)

Dropout is not applied here: with one layer, nn.GRU/nn.LSTM's ``dropout`` argument does nothing
(it acts only between stacked layers), so the model applies an explicit nn.Dropout to the output.
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN_SIZE = 128  # seed report: GRU hidden size 128
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


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
        self.rnn = CELLS[cell](input_size, self.hidden_size, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, V, F) float, views in order -> (B, H) float."""
        _, h_n = self.rnn(x)  # GRU: h_n (1, B, H); LSTM: (h_n, c_n), each (1, B, H)
        if self.cell == "lstm":
            h_n = h_n[0]  # the hidden state, not the cell state
        return h_n[-1]  # (B, H)

"""Inference-only models: export a trained network without its optimizer state, and load it back.

Three formats (``r2n2-export --format``):

- ``weights``: ``torch.save`` of a plain dict (loads with ``torch.load(weights_only=True)``)::

      {"format": "r2n2-weights", "version": 1, "net": <network config with _target_>,
       "state_dict": <the network's tensors, in dtype>, "dtype": "float32" | "bfloat16",
       "image_size": 127, "source": <checkpoint it came from>}

  ``load_network`` rebuilds the network from ``net`` and loads the weights in float32.
- ``onnx``: ``images: (B, V, 3, 127, 127) float32 -> logits: (B, 32, 32, 32) float32`` with dynamic
  batch and view axes (torch.export-based exporter); run it with onnxruntime, apply a sigmoid.
- ``torchscript``: the same function traced with ``torch.jit.trace`` (``torch.jit.load`` runs it
  without this package).

Inputs are normalised exactly as in training (``r2n2.cli.predict.load_views``); outputs are logits.
The seed models' view recurrence is exported as one GRU / LSTM node (``for_export``), so any number
of views works; a network whose view loop cannot be exported that way fails the check and is not kept
(``write_checked``: an earlier file at the output path stays as it was).
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from r2n2.models.recurrent import CELLS, RecurrentAggregator
from r2n2.train.checkpoint import CheckpointError, load_module
from r2n2.train.network import build_network
from r2n2.utils.atomic import atomic_write

FORMAT = "r2n2-weights"
VERSION = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMATS = ("weights", "onnx", "torchscript")
# the checks compare exported logits with PyTorch's at every view count in this range (3D-R2N2: 1..5)
CHECK_VIEWS = (1, 2, 3, 4, 5)
ATOL = 1e-4
# the example input of the export (its batch and view sizes are dynamic in the exported model)
IMAGE_SIZE = 127


def _peek(path: Path) -> dict | None:
    """The file as a plain dict if torch can read it (memory-mapped, so cheap), else None."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def load_network(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """The network (eval mode, float32) from an exported weights file or a training checkpoint.

    Returns ``(net, info)``; ``info`` has ``kind`` ("weights" | "checkpoint"), ``net`` (its config)
    and ``image_size``. Bad files raise ``CheckpointError`` naming the file and the fault.
    """
    path = Path(path).expanduser()
    obj = _peek(path) if path.is_file() else None
    if obj is None or obj.get("format") != FORMAT:
        module, ckpt = load_module(path)  # a checkpoint, or the error that says what the file is not
        return module.net, {"kind": "checkpoint", "net": ckpt["hyper_parameters"]["net"], "image_size": IMAGE_SIZE}
    if obj.get("version") != VERSION or not isinstance(obj.get("net"), dict) or "_target_" not in obj["net"]:
        raise CheckpointError(
            f"{path}: an r2n2 weights file of an unknown version {obj.get('version')!r} or without a network config"
        )
    try:
        net = build_network(obj["net"])
    except Exception as e:  # the network it names cannot be built here
        raise CheckpointError(f"{path}: cannot build its network {obj['net'].get('_target_')} ({e})") from None
    try:
        net.load_state_dict({k: v.float() for k, v in obj["state_dict"].items()})
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: its weights do not fit the network it names ({' '.join(str(e).split())[:300]})"
        ) from None
    return net.float().eval(), {
        "kind": "weights",
        "net": obj["net"],
        "image_size": int(obj.get("image_size", IMAGE_SIZE)),
    }


def export_weights(net: nn.Module, net_config: dict, f: IO[bytes], dtype: str = "fp32", source: str = "") -> None:
    """Write ``net``'s weights (``dtype`` fp32 or bf16) and its config ``net_config`` (``_target_`` and
    arguments: ``load_network``'s ``info["net"]``), no optimizer state, to the binary file ``f``;
    ``source`` names the checkpoint or weights file they came from."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    state = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "net": net_config,
        "state_dict": state,
        "dtype": str(DTYPES[dtype]).removeprefix("torch."),
        "image_size": IMAGE_SIZE,
        "source": source,
    }
    torch.save(payload, f)


def _example(batch: int = 2, views: int = 3) -> torch.Tensor:
    return torch.zeros(batch, views, 3, IMAGE_SIZE, IMAGE_SIZE)


class _SequenceRecurrent(nn.Module):
    """``RecurrentAggregator`` run by nn.GRU / nn.LSTM itself: ``(B, V, F) -> (B, H)``, the same
    function and parameter names (``rnn.weight_ih_l0``, ...). The training module loops over the views
    in Python (for torch.compile); exported that loop would be unrolled for the example's view count,
    while nn.GRU / nn.LSTM export as one ONNX GRU / LSTM node over a sequence of any length."""

    def __init__(self, agg: nn.Module):
        super().__init__()
        w = agg.rnn.weight_ih_l0
        self.cell = agg.cell
        self.rnn = CELLS[agg.cell](w.shape[1], agg.hidden_size, num_layers=1, batch_first=True)
        self.rnn.load_state_dict(agg.rnn.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)  # GRU: h_n (1, B, H); LSTM: (h_n, c_n)
        return (h_n[0] if self.cell == "lstm" else h_n)[-1]


def for_export(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (eval mode) whose view recurrences export with a dynamic number of views."""
    net = copy.deepcopy(net).eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RecurrentAggregator):
                setattr(parent, name, _SequenceRecurrent(child).eval())
    return net


def export_onnx(net: torch.nn.Module, f: IO[bytes]) -> None:
    """ONNX to the binary file ``f``, with dynamic batch and view axes (the torch.export-based exporter;
    opset of this torch)."""
    batch, views = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("views", min=1, max=64)
    with torch.no_grad(), warnings.catch_warnings():
        # raised inside torch while it exports nn.GRU (its private _flat_weights, a deprecated size check);
        # nothing in our model causes them and the check below proves the result right
        warnings.filterwarnings("ignore", message=r".*_flat_weights.*assigned during export", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"_check_is_size will be removed", category=FutureWarning)
        program = torch.onnx.export(
            for_export(net),
            (_example(),),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: batch, 1: views}},
            dynamo=True,
            verbose=False,
        )
    f.write(program.model_proto.SerializeToString())


_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


def export_torchscript(net: torch.nn.Module, f: IO[bytes]) -> None:
    """``torch.jit.trace`` of the network to the binary file ``f``; its batch and view sizes stay dynamic
    (where they do not, ``check`` finds it)."""
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export; the user asked for this format
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        # nn.GRU's own input-size checks, constant for a traced model (its sizes are fixed by its weights)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
        traced = torch.jit.trace(for_export(net), _example(), check_trace=False)
        torch.jit.save(traced, f)


def run_exported(path: str | os.PathLike, fmt: str):
    """A callable ``images: (B, V, 3, S, S) float32 tensor -> logits (B, 32, 32, 32) numpy float32``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x.numpy()})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
            module = torch.jit.load(os.fspath(path), map_location="cpu").eval()

        def run(x):
            with torch.no_grad():
                return module(x).float().numpy()

        return run
    if fmt == "weights":
        net, _ = load_network(path)

        def run(x):
            with torch.no_grad():
                return net(x).float().numpy()

        return run
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def check(
    net: torch.nn.Module, path: str | os.PathLike, fmt: str, views: torch.Tensor, atol: float = ATOL
) -> dict[int, float]:
    """Run the exported model and ``net`` on the first 1..5 views of ``views: (B, V>=5, 3, S, S)``;
    returns ``{views: max |logit difference|}`` and raises ``AssertionError`` above ``atol``."""
    run = run_exported(path, fmt)
    diffs = {}
    for v in CHECK_VIEWS:
        x = views[:, :v].contiguous()
        with torch.no_grad():
            ref = net.eval()(x).float().numpy()
        diffs[v] = float(np.abs(run(x) - ref).max())
    bad = {v: d for v, d in diffs.items() if not d <= atol}
    if bad:
        raise AssertionError(f"{fmt} model differs from PyTorch by more than {atol:g} at views {bad}")
    return diffs


class ExportCheckError(Exception):
    """An exported model that did not load, run or reproduce PyTorch; it was not kept."""


def _reason(e: BaseException) -> str:
    """One line of an exception: its last ``...Error: ...`` line (a TorchScript error's earlier lines are
    its traceback), else its whole message on one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"\w+(Error|Exception): ", ln)]
    return errors[-1] if errors else f"{type(e).__name__}: {' '.join(lines)}"[:400]


def write_checked(
    out: str | os.PathLike,
    fmt: str,
    write: Callable[[IO[bytes]], None],
    net: nn.Module,
    views: torch.Tensor,
    atol: float = ATOL,
) -> dict[int, float]:
    """Export with ``write(f)`` to a temporary file beside ``out``, ``check`` it against ``net`` on
    ``views: (B, V>=5, 3, S, S)`` and rename it over ``out`` only if it passes (``atomic_write``).

    Any exception from the check (logits beyond ``atol``, or a model its runtime cannot load or run,
    like a view loop unrolled at trace time) raises ``ExportCheckError`` naming ``out``, ``fmt`` and
    the reason; the temporary file is then removed and a file already at ``out`` is left as it was.
    Returns ``check``'s ``{views: max |logit difference|}``.
    """
    with atomic_write(out) as f:
        write(f)
        f.flush()
        try:
            return check(net, f.name, fmt, views, atol)
        except Exception as e:
            raise ExportCheckError(
                f"{out}: the {fmt} export failed its check, so nothing was written ({_reason(e)})"
            ) from e

"""``r2n2-export``: write an inference-only model (no optimizer state) from a training checkpoint (or a weights file).

    r2n2-export --ckpt outputs/train/<run>/checkpoints/best.ckpt --format weights --out model.pt [--dtype bf16]
    r2n2-export --ckpt ... --format onnx --out model.onnx [--check-images a.png b.png ...]
    r2n2-export --ckpt ... --format torchscript --out model.ts
    r2n2-export --ckpt model.pt --format weights --dtype bf16 --out model-bf16.pt   # --ckpt: a weights file too

Every export is checked before it is kept: the exported model and PyTorch run on the same input with
1..5 views, and their logits must agree to 1e-4 (fp32 formats; a bf16 weights file reports its
difference). The input is ``--check-images`` (your photos, preprocessed as ``r2n2-predict`` does;
repeated to fill 5 views), else a seeded random batch. The export is written to a temporary file beside
``--out`` and renamed over it only if it passes; an export that fails (or cannot even be run) prints why
and exits 1, leaving any earlier file at ``--out`` as it was. ``r2n2-predict --ckpt`` accepts the weights file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from r2n2.data.errors import DataError
from r2n2.export import (
    ATOL,
    CHECK_VIEWS,
    FORMATS,
    IMAGE_SIZE,
    ExportCheckError,
    export_onnx,
    export_torchscript,
    export_weights,
    load_network,
    write_checked,
)
from r2n2.train.checkpoint import CheckpointError


def check_input(images: list[str] | None) -> torch.Tensor:
    """``(1, 5, 3, 127, 127)`` float: the given photos cycled to 5 views, or a seeded random one."""
    if images:
        from r2n2.cli.predict import load_views

        views = load_views(images, IMAGE_SIZE)  # (1, V, 3, S, S)
        idx = [i % views.shape[1] for i in range(max(CHECK_VIEWS))]
        return views[:, idx].contiguous()
    return torch.randn(1, max(CHECK_VIEWS), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def export(ckpt: str, fmt: str, out: str, dtype: str = "fp32", images: list[str] | None = None) -> dict:
    """Export ``ckpt`` as ``fmt`` to ``out`` if it passes the check (else ``ExportCheckError``, ``out``
    untouched); returns sizes and the check's differences."""
    net, info = load_network(ckpt)  # a training checkpoint or a weights file (then re-saved in dtype)
    writers = {
        "weights": lambda f: export_weights(net, info["net"], f, dtype, str(ckpt)),
        "onnx": lambda f: export_onnx(net, f),
        "torchscript": lambda f: export_torchscript(net, f),
    }
    if fmt not in writers:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    atol = ATOL if (fmt != "weights" or dtype == "fp32") else float("inf")
    diffs = write_checked(out, fmt, writers[fmt], net, check_input(images), atol)
    return {"out": out, "bytes": os.path.getsize(out), "ckpt_bytes": os.path.getsize(ckpt), "max_diff": diffs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="r2n2-export", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ckpt", required=True, help="a training checkpoint (.ckpt) or an exported weights file")
    ap.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    ap.add_argument("--out", required=True, help="output file")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights precision (--format weights)")
    ap.add_argument(
        "--check-images",
        nargs="+",
        default=None,
        metavar="IMG",
        help="photos to check the export on (default: a seeded random input)",
    )
    args = ap.parse_args(argv)
    if args.dtype != "fp32" and args.format != "weights":
        ap.error("--dtype bf16 applies to --format weights only (ONNX and TorchScript are exported in fp32)")
    try:
        info = export(args.ckpt, args.format, args.out, args.dtype, args.check_images)
    except (CheckpointError, DataError) as e:
        print(f"r2n2-export: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ExportCheckError as e:
        print(f"r2n2-export: error: {e}", file=sys.stderr)
        sys.exit(1)
    diffs = ", ".join(f"{v} view(s) {d:.1e}" for v, d in info["max_diff"].items())
    print(
        f"[r2n2-export] {args.format} ({args.dtype if args.format == 'weights' else 'fp32'}) -> {Path(args.out)}: "
        f"{info['bytes'] / 1e6:.1f} MB (checkpoint {info['ckpt_bytes'] / 1e6:.1f} MB); "
        f"max |logit - PyTorch|: {diffs}"
    )


if __name__ == "__main__":
    main()

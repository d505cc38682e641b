"""Ablation of the seed model on the built-in synthetic dataset: which change lets it learn?

Runs ``train.py`` once per variant (same data, schedule, seed and budget), reads each run's
metrics.json and prints a Markdown table (also written to ``--out``).

    python benchmarks/ablation.py                       # all variants, 1 epoch each (~1 h on 2 CPU cores)
    python benchmarks/ablation.py --only paper batchnorm --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recipe_ablation import DATA_32x24  # beside this script: the data of its table

from r2n2.utils.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]

# the report's exact design, spelled out so every variant differs from it by what its name says
PAPER = [
    "model.encoder.norm=none",
    "model.encoder.init=default",
    "model.dropout=0.5",
    "model.hidden_size=128",
    "model.decoder.name=linear_conv3d",
]
VARIANTS = {
    "paper": [],
    "paper, dropout 0": ["model.dropout=0"],
    "paper, hidden 512": ["model.hidden_size=512"],
    "paper, up-conv decoder": ["model.decoder.name=upconv"],
    "kaiming init": ["model.encoder.init=kaiming"],
    "batchnorm": ["model.encoder.norm=batch"],
    "kaiming init + up-conv decoder": ["model.encoder.init=kaiming", "model.decoder.name=upconv"],
    "batchnorm + up-conv decoder": ["model.encoder.norm=batch", "model.decoder.name=upconv"],
}
KEYS = {
    "paper": "paper",
    "dropout0": "paper, dropout 0",
    "hidden512": "paper, hidden 512",
    "upconv": "paper, up-conv decoder",
    "kaiming": "kaiming init",
    "batchnorm": "batchnorm",
    "kaiming_upconv": "kaiming init + up-conv decoder",
    "batchnorm_upconv": "batchnorm + up-conv decoder",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(KEYS), help="variants to run (default: all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runs", default="outputs/ablation", help="folder for the runs")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    names = [KEYS[k] for k in args.only] if args.only else list(VARIANTS)
    common = PAPER + [
        f"trainer.max_epochs={args.epochs}",
        f"data.batch_size={args.batch_size}",
        "module.viz_every_n_epochs=0",
        "scheduler=none",
        *DATA_32x24,
        *args.overrides,
    ]
    rows = []
    for name in names:
        run_dir = Path(args.runs) / name.replace(" ", "_").replace(",", "").replace("+", "and")
        cmd = [sys.executable, str(ROOT / "train.py"), *common, *VARIANTS[name], f"hydra.run.dir={run_dir}"]
        print("+", " ".join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        m = json.loads((run_dir / "metrics.json").read_text())
        m["total_seconds"] = time.perf_counter() - start
        rows.append((name, m))
        print(
            f"  {name}: test IoU {m['test/iou']:.3f} (mean shape {m['baseline/global_mean_shape_test_iou']:.3f})",
            flush=True,
        )
    base = rows[0][1]
    lines = [
        f"Budget: {args.epochs} epoch(s) of {base.get('train_samples', 'all')} training samples, batch "
        f"{args.batch_size}, Adam 1e-3 (wd 1e-4), constant lr, bf16-mixed, seed 0; synthetic dataset of "
        f"32 objects x 24 views per category; machine: {describe_machine()}.",
        f"Global mean-shape baseline (test IoU@0.3): {base['baseline/global_mean_shape_test_iou']:.3f}; "
        f"per-category mean shape: {base['baseline/category_mean_shape_test_iou']:.3f}.",
        "",
        "| variant | parameters | test IoU@0.3 | val IoU@0.3 | test loss | train samples/s | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['parameters']:,} | {m['test/iou']:.3f} | {m['val/iou']:.3f} | "
            f"{m['test/loss']:.4f} | {m['train_samples_per_second']:.1f} | {m['total_seconds']:.0f} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()

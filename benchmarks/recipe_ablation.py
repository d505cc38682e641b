"""Recipe ablation: which training switch lifts the default model above the per-category mean shape?

Every variant is ``python train.py`` with the current defaults plus its switches (same data, seed and
number of training samples): the single ones differ from the defaults by ONE switch; the ladder
(``ladder0_old_defaults``, ``ladder1_upconv``, ``ladder2_cosine``, then ``default``) starts from the
defaults before docs/ablation.md section 5 and adds one switch per row; ``objects_x2`` doubles the
synthetic objects and halves the epochs (as many samples, another split: every row is read against
its own split's baselines). The script reads each run's metrics.json and prints a Markdown table
(also written to ``--out``):

    python benchmarks/recipe_ablation.py                              # all variants
    python benchmarks/recipe_ablation.py --epochs 2 --only ladder0_old_defaults ladder1_upconv ladder2_cosine default

Test IoU at 1..5 views of one checkpoint (issue 12, item 4) is r2n2-eval's job:
``r2n2-eval ckpt=<run>/checkpoints/best.ckpt`` (eval.md: one row per view count).
Runs that already have a metrics.json in ``--runs`` are read, not retrained (``--rerun`` to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

# the defaults before docs/ablation.md section 5 (the report's decoder, schedule and loss)
OLD_DEFAULTS = ["model.decoder.name=linear_conv3d", "scheduler=multistep", "module.loss.soft_iou_weight=0.0"]
# keys are the --only names; single switches against today's defaults (conf/), then the ladder of
# section 5 from the old defaults up to today's: each ladder row adds ONE switch to the row before
VARIANTS = {
    "default": [],
    "onecycle": ["scheduler=onecycle"],
    "dropout0": ["model.dropout=0"],
    "views_1_5": ["data.views_per_sample=[1,5]"],
    "augment": ["data.augment=true"],
    "batch32": ["data.batch_size=32"],
    "hidden256": ["model.hidden_size=256"],
    # twice the objects at as many training samples: 64 per category (13,728 training samples per
    # epoch, twice the default's) for half the epochs; another split, so the row has its own baselines
    "objects_x2": ["data.source.objects_per_category=64", "trainer.max_epochs=1"],
    "ladder0_old_defaults": OLD_DEFAULTS,
    "ladder1_upconv": OLD_DEFAULTS[1:],  # + model.decoder.name=upconv
    "ladder2_cosine": OLD_DEFAULTS[2:],  # + scheduler=cosine; + the soft-IoU term is "default"
}


def _steps(train_batches: int | None, batch: int) -> int | None:
    """Optimiser steps per epoch that see ``train_batches`` x 16 samples at ``batch`` (equal samples per row)."""
    return max(1, train_batches * 16 // batch) if train_batches else None


# no TensorBoard, figures or progress bar: only metrics.json is read
QUIET = ["logger=none", "module.viz_every_n_epochs=0", "trainer.enable_progress_bar=false"]
# the synthetic set of docs/ablation.md sections 4-6 and of the CPU stand-in (benchmarks/overfit_proxy.py):
# 32 objects x 24 views per category, the default until the 2-minute GPU budget moved it to 128 x 6
# (same rendering); kept here so that these scripts reproduce their tables (an override replaces it)
DATA_32x24 = ["data.source.objects_per_category=32", "data.source.views=24"]


def train_or_read(run_dir: Path, overrides: list[str], rerun: bool) -> dict:
    """``python train.py *overrides`` into ``run_dir`` (its output in ``<run_dir>.log`` beside it),
    unless ``run_dir`` already holds a metrics.json and ``rerun`` is false; returns that metrics.json."""
    metrics = run_dir / "metrics.json"
    if rerun or not metrics.is_file():
        cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
        print("+", " ".join(cmd), flush=True)
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(
                cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
    return json.loads(metrics.read_text())


def run_variant(name: str, overrides: list[str], runs: Path, rerun: bool, train_batches: int | None) -> dict:
    steps = _steps(train_batches, _batch(overrides + VARIANTS[name]))
    if steps:
        overrides = [*overrides, f"trainer.limit_train_batches={steps}"]
    return train_or_read(runs / name, [*overrides, *VARIANTS[name]], rerun)


def _batch(overrides: list[str]) -> int:
    """The batch size a run trains with (the last ``data.batch_size=`` override, else the default 16)."""
    sizes = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("data.batch_size=")]
    return sizes[-1] if sizes else 16


# how a run scores against its own test split's baselines: the columns both this script's and
# overfit_proxy.py's tables print (more objects make another split, so each row has its own)
SCORE_HEADER = (
    "train IoU (last epoch) | val IoU@0.3 | test IoU@0.3 | category mean shape | model - category mean "
    "| retrieval | model - retrieval"
)


def score_cells(m: dict) -> str:
    """The SCORE_HEADER cells of one run's metrics.json ``m``."""
    cat, ret = m["baseline/category_mean_shape_test_iou"], m["baseline/retrieval_test_iou"]
    return (
        f"{m['train/iou']:.3f} | {m['val/iou']:.3f} | {m['test/iou']:.3f} | {cat:.3f} | "
        f"{m['test/iou'] - cat:+.3f} | {ret:.3f} | {m['test/iou'] - ret:+.3f}"
    )


def table(rows: list[tuple[str, dict]], train_batches: int | None, overrides: list[str]) -> str:
    """One Markdown row per run."""
    lines = [
        f"| variant | switch | training samples (epochs x steps x batch) | parameters | {SCORE_HEADER} "
        "| train samples/s | fit + test (s) |",
        "|---" * 13 + "|",
    ]
    for name, m in rows:
        switch = " ".join(f"`{o}`" for o in VARIANTS[name]) or "(defaults)"
        batch = _batch(overrides + VARIANTS[name])
        samples = (
            f"{m['epochs']} x {_steps(train_batches, batch)} x {batch}"
            if train_batches
            else f"{m['epochs']} epoch(s), batch {batch}"
        )
        lines.append(
            f"| {name} | {switch} | {samples} | {m['parameters']:,} | {score_cells(m)} | "
            f"{m['train_samples_per_second']:.1f} | {m['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--train-batches",
        type=int,
        default=None,
        help="steps of batch 16 per epoch (trainer.limit_train_batches, scaled so every batch size sees "
        "as many samples; default: the whole split)",
    )
    ap.add_argument("--runs", default="outputs/recipe", help="folder for the runs")
    ap.add_argument("--rerun", action="store_true", help="retrain variants that already have metrics.json")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    common = [f"trainer.max_epochs={args.epochs}", *QUIET, *DATA_32x24, *args.overrides]
    rows = []
    for name in args.only or list(VARIANTS):
        m = run_variant(name, common, runs, args.rerun, args.train_batches)
        rows.append((name, m))
        print(
            f"  {name}: test IoU {m['test/iou']:.3f} (category mean shape "
            f"{m['baseline/category_mean_shape_test_iou']:.3f})",
            flush=True,
        )
    text = table(rows, args.train_batches, args.overrides)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

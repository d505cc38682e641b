"""The over-fitting of the 2-minute GPU budget, scaled down to the CPU: which lever fights it?

On an H200 the default model trained for 2 minutes (37 epochs of the 286 training objects of 32 x 24 data)
ends at train IoU 0.93 against val 0.65 (docs/ablation.md). A CPU cannot run that budget (~2.5 hours
per run here), so this script builds the same regime at a quarter of the data: 8 objects per
category (65 training objects) seen 13 times, ~20,000 training samples, the same number of samples
as 3 epochs of 32 objects per category (24 views each: the default synthetic set when this was
measured; recipe_ablation.DATA_32x24 keeps it). Each lever is then one switch on top of it:

    base        8 objects per category, 13 epochs (the over-fitted regime)
    augment     + data.augment=true (3D-R2N2's crop, flip, background, colour jitter)
    objects_x4  32 objects per category, 3 epochs: 4x the objects, as many training samples
    both        4x the objects and augmentation
    weight_decay  8 objects per category, 13 epochs, Adam's weight decay 1e-3 instead of the report's 1e-4
    dropout0    8 objects per category, 13 epochs, no dropout on the 128-wide code (the report's is 0.5)
    dropout08   8 objects per category, 13 epochs, dropout 0.8 on it
    views_1_5   8 objects per category, 13 epochs, 1..5 random views per training batch (tested at 1)
    linear_decoder  8 objects per category, 13 epochs, the report's linear -> 32^3 -> Conv3d decoder
    bce         8 objects per category, 13 epochs, the report's plain BCE (no soft-IoU term)

More objects make another split, so every run is scored against its own test split's baselines
(per-category mean shape, retrieval). Prints a Markdown table (also written to ``--out``):

    python benchmarks/overfit_proxy.py [--only base augment] [extra Hydra overrides...]

Runs that already have a metrics.json in ``--runs`` are read, not retrained (``--rerun`` to redo).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recipe_ablation import QUIET, SCORE_HEADER, DATA_32x24, score_cells, train_or_read  # beside this script

SMALL, LARGE = 8, 32  # objects per category: the proxy's set and 4x it (the synthetic default then)
# the same number of training samples: 8 per category -> 5 train objects x 13 categories x 24 views
# = 1,560 samples per epoch x 13 epochs = 20,280; 32 -> 6,864 x 3 = 20,592
BASE = [f"data.source.objects_per_category={SMALL}", "trainer.max_epochs=13"]  # the over-fitted regime
MORE = [f"data.source.objects_per_category={LARGE}", "trainer.max_epochs=3"]  # 4x the objects, as many samples
LEVERS = {
    "base": BASE,
    "augment": [*BASE, "data.augment=true"],
    "objects_x4": MORE,
    "both": [*MORE, "data.augment=true"],
    "weight_decay": [*BASE, "optimizer.weight_decay=1e-3"],
    "dropout0": [*BASE, "model.dropout=0"],
    "dropout08": [*BASE, "model.dropout=0.8"],
    "views_1_5": [*BASE, "data.views_per_sample=[1,5]"],
    "linear_decoder": [*BASE, "model.decoder.name=linear_conv3d"],
    "bce": [*BASE, "module.loss.soft_iou_weight=0"],
}


def table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"| lever | switches | epochs | {SCORE_HEADER} | oracle NN | fit + test (s) |", "|---" * 12 + "|"]
    for name, m in rows:
        lines.append(
            f"| {name} | {' '.join(f'`{o}`' for o in LEVERS[name])} | {m['epochs']} | {score_cells(m)} | "
            f"{m['baseline/oracle_nearest_neighbour_test_iou']:.3f} | {m['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(LEVERS), help="levers to run (default: all)")
    ap.add_argument("--runs", default="outputs/overfit_proxy", help="folder for the runs")
    ap.add_argument("--rerun", action="store_true", help="retrain levers that already have metrics.json")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only or list(LEVERS):
        m = train_or_read(runs / name, [*QUIET, *DATA_32x24, *LEVERS[name], *args.overrides], args.rerun)
        rows.append((name, m))
        print(
            f"  {name}: test IoU {m['test/iou']:.3f}, category mean shape "
            f"{m['baseline/category_mean_shape_test_iou']:.3f}, train IoU {m['train/iou']:.3f}",
            flush=True,
        )
    text = table(rows)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

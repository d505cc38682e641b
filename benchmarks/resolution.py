"""The default model at 32^3, 64^3 (and 128^3) on the default synthetic data, within one budget
(issue 26, item 4): parameters, training samples/s, peak memory, and test IoU@0.3 at the model's own
resolution and after max-pooling its prediction to 32^3, against the mean shapes of the same grids.

    python benchmarks/resolution.py --resolutions 32 64 --minutes 5 --work /tmp/res [overrides...]

Each resolution trains in a child ``train.py`` (seed 0, ``trainer.max_time`` = the budget, the cosine
schedule spread over ``--epochs``) under ``/usr/bin/time``, which gives its peak RSS (on a GPU
machine that is host memory; the card's is not read here). The pooled IoU: the thresholded prediction
and the ground truth are both max-pooled by R/32 (a 32^3 voxel is occupied if any of its finer voxels
is), and so is the thresholded category mean shape; so the 32^3 column compares every model on the
same coarse shapes.
Prints a markdown table and writes resolution.json in --work. ``--step-memory B...`` only measures
what one training step at batch B adds to the peak memory at each R (for the batch size to pick).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
COARSE = 32  # the paper's grid: every model is also scored here


def pooled_iou(pred: torch.Tensor, gt: torch.Tensor, factor: int) -> torch.Tensor:
    """Per-sample IoU (B,) of boolean grids ``pred, gt: (B, R, R, R)`` max-pooled by ``factor``
    (the project's ``voxel_iou``: 1.0 where both are empty)."""
    from r2n2.evaluation.metrics import voxel_iou

    if factor > 1:
        pred = F.max_pool3d(pred[:, None].float(), factor)[:, 0] > 0
        gt = F.max_pool3d(gt[:, None].float(), factor)[:, 0] > 0
    return voxel_iou(pred, gt, 0.5)  # 0/1 grids: any threshold in (0, 1] reads them as they are


def score(ckpt: Path, threshold: float = 0.3) -> dict:
    """Test IoU@``threshold`` of ``ckpt`` at its own R and pooled to 32^3, and the category mean shape's."""
    import hydra

    from r2n2.evaluation.baselines import mean_shapes
    from r2n2.train.checkpoint import load_module

    module, data = load_module(ckpt)
    cfg = {**data["hyper_parameters"]["data"], "num_workers": 0, "persistent_workers": False, "eval_views": 1}
    dm = hydra.utils.instantiate(cfg, _recursive_=True)
    dm.prepare_data()
    dm.setup()
    r = dm.resolution
    factor = r // COARSE
    _, per_category = mean_shapes(dm.datasets["train"])
    fine, coarse, mean_fine, mean_coarse = [], [], [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            batch = dm.on_after_batch_transfer(batch, 0)
            pred = torch.sigmoid(module(batch["images"]).float()) >= threshold
            gt = batch["voxels"].bool()
            mean = torch.stack([per_category[c] for c in batch["category"]]) >= threshold
            fine.append(pooled_iou(pred, gt, 1))
            coarse.append(pooled_iou(pred, gt, factor))
            mean_fine.append(pooled_iou(mean, gt, 1))
            mean_coarse.append(pooled_iou(mean, gt, factor))
    cat = lambda xs: float(torch.cat(xs).mean())  # noqa: E731
    return {
        "resolution": r,
        "iou": cat(fine),
        "iou_pooled_32": cat(coarse),
        "category_mean_iou": cat(mean_fine),
        "category_mean_iou_pooled_32": cat(mean_coarse),
        "test_samples": len(torch.cat(fine)),
    }


def train(r: int, args) -> dict:
    """One budgeted run at R: its metrics.json figures, peak memory and the scores of its best checkpoint."""
    run = args.work / f"r{r}"
    timed = ["/usr/bin/time", "-f", "peak_rss_kb=%M", sys.executable, str(ROOT / "train.py")]
    cmd = [
        *timed,
        f"data.resolution={r}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.max_time=00:00:{args.minutes:02d}:00",
        "logger=none",
        f"hydra.run.dir={run}",
        f"paths.data_dir={args.data_dir or args.work / 'data'}",
        *args.overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train.py at {r}^3 failed:\n{proc.stderr[-4000:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split("=")[1])
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "parameters": metrics["parameters"],
        "train_samples_per_second": metrics["train_samples_per_second"],
        "epochs_run": len(metrics.get("train_samples_per_second_by_epoch", [])),
        "peak_rss_gb": peak_kb * 1024 / 1e9,
        "wall_s": time.perf_counter() - start,
        **score(run / "checkpoints" / "best.ckpt"),
    }


STEP_MEMORY = """
import resource, sys, torch
from hydra import compose, initialize_config_dir
from r2n2.train.network import build_network
r, batch = int(sys.argv[1]), int(sys.argv[2])
with initialize_config_dir(config_dir=sys.argv[3], version_base="1.3"):
    cfg = compose("config", [f"data.resolution={r}"])
net = build_network(cfg.model)
opt = torch.optim.Adam(net.parameters())
images, voxels = torch.rand(batch, 1, 3, 127, 127), (torch.rand(batch, r, r, r) < 0.1).float()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(2):  # the second step holds Adam's state too
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), voxels)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def step_memory(r: int, batch: int) -> float:
    """GB that one fp32 training step of the default model at R adds to the peak RSS of a fresh process
    (activations, gradients, Adam state; random inputs of the real shapes, ``images (B, 1, 3, 127, 127)``,
    ``voxels (B, R, R, R)``): what a batch needs on top of the process, on a CPU or, roughly, a GPU."""
    cmd = [sys.executable, "-c", STEP_MEMORY, str(r), str(batch), str(ROOT / "conf")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--minutes", type=int, default=5, help="training budget per resolution (trainer.max_time)")
    ap.add_argument("--epochs", type=int, default=2, help="the schedule's length (it stops at --minutes first)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--data-dir", type=Path, help="where the synthetic sets and caches are (default: --work/data)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. data.batch_size=8)")
    ap.add_argument(
        "--step-memory",
        type=int,
        nargs="+",
        metavar="B",
        help="only print what one training step at batch B adds to peak memory at each R (no training)",
    )
    args = ap.parse_args(argv)
    if args.step_memory:
        print("| R | " + " | ".join(f"batch {b} (GB)" for b in args.step_memory) + " |")
        print("|---|" + "---|" * len(args.step_memory))
        for r in args.resolutions:
            print(f"| {r} | " + " | ".join(f"{step_memory(r, b):.2f}" for b in args.step_memory) + " |")
        return
    if args.work is None:
        ap.error("--work is required to train")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = {r: train(r, args) for r in args.resolutions}
    (args.work / "resolution.json").write_text(json.dumps(rows, indent=2))
    print(f"\nbudget {args.minutes} min per resolution; machine: see docs/resolution.md\n")
    print(
        "| R | parameters | train samples/s | peak RSS (GB) | test IoU@0.3 at R | same, pooled to 32^3 | "
        "category mean shape at R / pooled |"
    )
    print("|---|---|---|---|---|---|---|")
    for r, x in rows.items():
        rss = f"{x['peak_rss_gb']:.2f}"
        print(
            f"| {r} | {x['parameters']:,} | {x['train_samples_per_second']:.1f} | {rss} | {x['iou']:.3f} | "
            f"{x['iou_pooled_32']:.3f} | {x['category_mean_iou']:.3f} / {x['category_mean_iou_pooled_32']:.3f} |"
        )


if __name__ == "__main__":
    main()

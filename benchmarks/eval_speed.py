"""r2n2-eval's scoring, before and after the fast path, in one run on the same samples and machine.

    python benchmarks/eval_speed.py --ckpt outputs/train/<run>/checkpoints/best.ckpt [--samples 256]

old: as r2n2-eval scored up to this change: the split opened at each view count, a forward per view
count, then per sample marching cubes, surface sampling and two fresh k-d trees (the ground truth's
points were already computed once per object). new: ``r2n2.scoring.score_network`` (one forward for
all view counts, F-scores in a process pool beside it, ground-truth surfaces cached). Both score IoU at
the 0.05 threshold grid and F-score@1% at 0.3 for every view count. Prints time per sample and view
count, and checks that both give the same figures.
"""

from __future__ import annotations

import argparse
import os
import time

import hydra
import numpy as np
import torch

from r2n2 import scoring as S
from r2n2.checkpoint import load_module
from r2n2.data.dataset import PackedDataset
from r2n2.data.transforms import to_images
from r2n2.evaluation import SELECTION_GRID
from r2n2.fscore import FScorer, fscore_points, surface_points
from r2n2.machine import describe_machine
from r2n2.metrics import voxel_iou_thresholds


def old_path(net, split: PackedDataset, rows: np.ndarray, views: list[int], thresholds, n: int, dtype, batch: int):
    """The previous r2n2-eval loop, restricted to ``rows``: {v: (iou (N, T), fscore (N,))} and seconds
    spent in the forward and in the F-score."""
    from r2n2.baselines import object_voxels

    grids = object_voxels(split).numpy() > 0.5
    gt_points = {o: surface_points(grids[o], n, seed=1) for o in np.unique(split.samples[rows, 0])}
    out, t_forward, t_fscore = {}, 0.0, 0.0
    for v in views:
        ds = PackedDataset(split.folder, v, split.categories, seed=split.seed)
        ious, fss = [], []
        for i in range(0, len(rows), batch):
            start = time.perf_counter()
            items = [ds[int(r)] for r in rows[i:i + batch]]
            images = to_images(torch.from_numpy(np.stack([it["rgba"] for it in items])))
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                probs = torch.sigmoid(net(images).float())
            gts = torch.from_numpy(np.stack([it["voxels"] for it in items])).bool()
            ious.append(voxel_iou_thresholds(probs, gts, torch.tensor(thresholds)).numpy())
            t_forward += time.perf_counter() - start
            start = time.perf_counter()
            pred = (probs >= 0.3).numpy()
            objs = split.samples[rows[i:i + batch], 0]
            fss += [fscore_points(surface_points(p, n, seed=0), gt_points[o]) for p, o in zip(pred, objs)]
            t_fscore += time.perf_counter() - start
        out[v] = (np.concatenate(ious), np.array(fss))
    return out, t_forward, t_fscore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--samples", type=int, default=256, help="test samples scored by both paths")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--points", type=int, default=8192, help="F-score surface points (r2n2-eval: 8192)")
    ap.add_argument("--workers", type=int, default=None, help="F-score processes (default: one per core)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "32"])
    args = ap.parse_args()
    scorer = FScorer(args.workers, args.points)  # before the network runs: its processes fork
    module, ckpt = load_module(args.ckpt)
    net = module.net.eval()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    dm = hydra.utils.instantiate({**ckpt["hyper_parameters"]["data"], "eval_views": max(args.views), "num_workers": 0})
    dm.prepare_data()
    dm.setup()
    split = dm.datasets["test"]
    rows = np.linspace(0, len(split) - 1, min(args.samples, len(split))).round().astype(int)  # spread over objects
    thresholds = tuple(float(t) for t in SELECTION_GRID)

    start = time.perf_counter()
    old, t_forward, t_fscore = old_path(net, split, rows, args.views, thresholds, args.points, dtype, args.batch_size)
    t_old = time.perf_counter() - start

    samples = S.all_samples(split, max(args.views))
    samples = S.Samples(split, samples.rows[rows], samples.obj[rows], samples.slots[rows])
    start = time.perf_counter()
    with scorer:
        new = S.score_network(net, samples, args.views, thresholds, {v: (0.3,) for v in args.views}, scorer,
                              torch.device("cpu"), dtype, args.batch_size, progress=False)
    t_new = time.perf_counter() - start

    iou_diff = max(float(np.abs(new[v].iou - old[v][0]).max()) for v in args.views)
    fs_diff = max(float(np.abs(new[v].fscore[0.3] - old[v][1]).max()) for v in args.views)
    units = len(rows) * len(args.views)
    print(f"Machine: {describe_machine()} (torch threads {torch.get_num_threads()}, F-score processes "
          f"{scorer.workers}, load average {os.getloadavg()[0]:.1f}). {len(rows)} test samples x views "
          f"{args.views}, {args.precision}, F-score with {args.points} points.\n")
    print("| path | forward (s) | F-score (s) | total (s) | ms per sample and view count | speed-up |")
    print("|---|---|---|---|---|---|")
    print(f"| old: a forward per view count, F-score per sample inline | {t_forward:.1f} | {t_fscore:.1f} | "
          f"{t_old:.1f} | {1000 * t_old / units:.1f} | 1.0 |")
    print(f"| new: one forward for all view counts, F-score in a pool | (overlapped) | (overlapped) | {t_new:.1f} | "
          f"{1000 * t_new / units:.1f} | {t_old / t_new:.1f} |")
    print(f"\nLargest difference new - old: IoU {iou_diff:.2g}, F-score {fs_diff:.2g} (bf16: the encoder runs in "
          f"another batch layout).")


if __name__ == "__main__":
    main()

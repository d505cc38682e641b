"""r2n2-eval's scoring, before and after each fast path, in one run on the same samples and machine.

    python benchmarks/eval_speed.py --ckpt outputs/train/<run>/checkpoints/best.ckpt [--objects 8]
    python benchmarks/eval_speed.py --ckpt <ckpt> --data source.root=/data/ShapeNet \\
        source.taxonomy=ShapeNet.json cache_dir=/data/cache --objects 40

Scores every sample of ``--objects`` test objects (protocol=ours: an object's samples share its
renderings) at views 1..5 and prints two tables:

1. per part, each timed alone on one thread of work (no pool): the encoder as issue 9 ran it (each
   sample's 5 views in its batch) and as issue 24 runs it (each distinct rendering once,
   ``r2n2.evaluation.scoring.EncodedViews``), the GRU + decoder, IoU, one F-score, and the recognition
   baselines' fit and predictions; then extrapolated to the tenth-size ShapeNet stand-in's test split
   (21,144 samples, val 10,560) and to ShapeNet's (210k);
2. end to end with the F-score pool: ``score_network`` as issue 9 left it against today's, with the
   ratio, and whether both give the same figures (IoU exactly, F-score to 1e-12).

``--pre-issue9`` adds the path before issue 9 (a forward per view count, F-scores inline).
"""

from __future__ import annotations

import argparse
import os
import time

import hydra
import numpy as np
import torch

from r2n2.data.dataset import PackedDataset
from r2n2.data.transforms import to_images
from r2n2.evaluation import scoring as S
from r2n2.evaluation.baselines import object_occupancy
from r2n2.evaluation.fscore import FScorer, fscore_points, surface_points
from r2n2.evaluation.metrics import voxel_iou_thresholds
from r2n2.evaluation.report import SELECTION_GRID
from r2n2.train.checkpoint import load_module
from r2n2.utils.machine import describe_machine

# the splits the costs are extrapolated to: the tenth-size stand-in (docs/scale.md) and ShapeNet
SPLITS = {"tenth-size stand-in": (21_144, 10_560, 73_546), "ShapeNet": (211_440, 105_600, 735_460)}


def pre_issue9(net, split: PackedDataset, rows: np.ndarray, views: list[int], thresholds, n: int, dtype, batch: int):
    """The r2n2-eval loop before issue 9, restricted to ``rows``: {v: (iou (N, T), fscore (N,))}."""
    grids = object_occupancy(split).numpy()
    gt_points = {o: surface_points(grids[o], n, seed=1) for o in np.unique(split.samples[rows, 0])}
    out = {}
    for v in views:
        ds = PackedDataset(split.folder, v, split.categories, seed=split.seed)
        ious, fss = [], []
        for i in range(0, len(rows), batch):
            items = [ds[int(r)] for r in rows[i : i + batch]]
            images = to_images(torch.from_numpy(np.stack([it["rgba"] for it in items])))
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                probs = torch.sigmoid(net(images).float())
            gts = torch.from_numpy(np.stack([it["voxels"] for it in items])).bool()
            ious.append(voxel_iou_thresholds(probs, gts, torch.tensor(thresholds)).numpy())
            objs = split.samples[rows[i : i + batch], 0]
            fss += [
                fscore_points(surface_points(p, n, seed=0), gt_points[o]) for p, o in zip((probs >= 0.3).numpy(), objs)
            ]
        out[v] = (np.concatenate(ious), np.array(fss))
    return out


def issue9(net, samples: S.Samples, views: list[int], thresholds, scorer: FScorer, dtype, batch: int) -> dict:
    """``score_network`` as issue 9 left it: each batch reads and encodes its samples' views (B x V
    images), then re-runs the rest of the network per view count; F-scores in the pool."""
    counts = S.ViewCounts(net.eval(), views, dtype)
    gts = object_occupancy(samples.dataset)
    iou = {v: np.zeros((len(samples), len(thresholds)), np.float32) for v in views}
    pending = []
    for i in range(0, len(samples), batch):
        index = np.arange(i, min(i + batch, len(samples)))
        gt = gts[torch.from_numpy(samples.obj[index])]
        for v, probs in counts(to_images(samples.rgba(index, max(views)))).items():
            iou[v][index] = voxel_iou_thresholds(probs, gt, torch.tensor(thresholds)).numpy()
            pending.append((v, index, scorer.submit(samples.obj[index].tolist(), gt.numpy(), (probs >= 0.3).numpy())))
    fscore = {v: np.zeros(len(samples)) for v in views}
    for v, index, future in pending:
        fscore[v][index] = future.result()
    return {v: (iou[v], fscore[v]) for v in views}


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


@torch.no_grad()
def parts(net, samples: S.Samples, views: list[int], thresholds, points: int, dtype, batch: int) -> dict:
    """Seconds of each part, timed alone: {name: (seconds, units)} and whether both encodings agree."""
    counts = S.ViewCounts(net.eval(), views, dtype)
    vmax, n = max(views), len(samples)
    batches = [np.arange(i, min(i + batch, n)) for i in range(0, n, batch)]
    old_enc = old_dec = 0.0
    old_probs = []
    for index in batches:
        images = to_images(samples.rgba(index, vmax))
        features, t = _timed(counts.encode, images.flatten(0, 1))
        old_enc += t
        probs, t = _timed(counts.decode, features.view(len(index), vmax, -1))
        old_dec += t
        old_probs.append(probs)
    encoded = S.EncodedViews(counts, samples, vmax, batch, torch.device("cpu"))
    new_enc = new_dec = t_iou = t_metric = 0.0
    same = True
    gts = object_occupancy(samples.dataset)
    thr = torch.tensor(thresholds)
    for index, before in zip(batches, old_probs):
        features, t = _timed(encoded.gather, index)  # encodes what this batch needs first
        new_enc += t
        probs, t = _timed(counts.decode, features)
        new_dec += t
        same &= all(torch.equal(probs[v], before[v]) for v in views)
        gt = gts[torch.from_numpy(samples.obj[index])]
        before, t = _timed(lambda: [voxel_iou_thresholds(p, gt, thr) for p in probs.values()])
        t_metric += t
        now, t = _timed(lambda: [S.iou_at_thresholds(p, gt, thr) for p in probs.values()])
        t_iou += t
        same &= all(torch.equal(a, b) for a, b in zip(before, now))
    first = batches[0]
    gt = gts[torch.from_numpy(samples.obj[first])].numpy()
    with FScorer(workers=0, n=points) as inline:
        _, t_fs = _timed(
            lambda: [
                inline.submit(samples.obj[first].tolist(), gt, (p >= 0.3).numpy()).result()
                for p in old_probs[0].values()
            ]
        )
    return {
        "encoder, issue 9 (each sample's views)": (old_enc, n * vmax, "image"),
        "encoder, now (each distinct rendering once)": (new_enc, len(encoded), "image"),
        "GRU + decoder": (new_dec, n * len(views), "prediction"),
        "IoU at 19 thresholds, issue 9 (a comparison per threshold)": (t_metric, n * len(views), "prediction"),
        "IoU at 19 thresholds, now (one histogram)": (t_iou, n * len(views), "prediction"),
        "F-score@1% (pool process, inline here)": (t_fs, len(first) * len(views), "F-score"),
        "_same": same,
        "_old_dec": old_dec,
    }


def baselines(train: PackedDataset, samples: S.Samples) -> dict:
    from r2n2.evaluation import recognition

    fitted, t_fit = _timed(recognition.fit, train)
    _, t_pred = _timed(recognition.predict, fitted, samples.dataset, samples.slots[:, 0], samples.obj)
    return {
        "recognition fit (train split)": (t_fit, len(train), "training image"),
        "recognition predict": (t_pred, len(samples), "sample"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument(
        "--data",
        nargs="*",
        default=[],
        help="overrides of the checkpoint's data config, key=value (dotted keys: source.root=...)",
    )
    ap.add_argument("--objects", type=int, default=8, help="test objects, all their samples scored")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--points", type=int, default=8192, help="F-score surface points (r2n2-eval: 8192)")
    ap.add_argument("--workers", type=int, default=None, help="F-score processes (default: one per core)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="32", choices=["bf16", "32"])
    ap.add_argument("--pre-issue9", action="store_true", help="also time the path before issue 9 (slow)")
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()
    scorer = FScorer(args.workers, args.points)  # before the network runs: its processes fork
    module, ckpt = load_module(args.ckpt)
    net = module.net.eval()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    data = {**ckpt["hyper_parameters"]["data"], "eval_views": max(args.views), "num_workers": 0}
    for item in args.data:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = data
        for k in path:
            node = node.setdefault(k, {})
        node[last] = None if value == "null" else int(value) if value.isdigit() else value
    dm = hydra.utils.instantiate(data)
    dm.prepare_data()
    dm.setup()
    split = dm.datasets["test"]
    objects = np.unique(split.samples[:, 0])
    chosen = objects[np.linspace(0, len(objects) - 1, min(args.objects, len(objects))).round().astype(int)]
    rows = np.flatnonzero(np.isin(split.samples[:, 0], chosen))  # every sample of each chosen object
    ours = S.all_samples(split, max(args.views))
    samples = S.Samples(split, rows, ours.obj[rows], ours.slots[rows])
    thresholds = tuple(float(t) for t in SELECTION_GRID)
    units = len(rows) * len(args.views)

    cost = parts(net, samples, args.views, thresholds, args.points, dtype, args.batch_size)
    if not args.no_baselines:
        cost.update(baselines(dm.datasets["train"], samples))
    same = cost.pop("_same")
    old_dec = cost.pop("_old_dec")

    with scorer:
        prev, t_prev = _timed(issue9, net, samples, args.views, thresholds, scorer, dtype, args.batch_size)
        new, t_new = _timed(
            S.score_network,
            net,
            samples,
            args.views,
            thresholds,
            {v: (0.3,) for v in args.views},
            scorer,
            torch.device("cpu"),
            dtype,
            args.batch_size,
            False,
        )
        oldest = None
        if args.pre_issue9:
            oldest, t_oldest = _timed(
                pre_issue9, net, split, rows, args.views, thresholds, args.points, dtype, args.batch_size
            )

    print(
        f"Machine: {describe_machine()} (torch threads {torch.get_num_threads()}, F-score processes "
        f"{scorer.workers}, load average {os.getloadavg()[0]:.1f}). {len(rows)} test samples of {len(chosen)} "
        f"objects x views {args.views}, {args.precision}, F-score with {args.points} points.\n"
    )
    print("| part (timed alone) | seconds | units | ms per unit |")
    print("|---|---|---|---|")
    for name, (seconds, count, unit) in cost.items():
        print(f"| {name} | {seconds:.1f} | {count} {unit}s | {1000 * seconds / max(count, 1):.2f} |")
    enc = cost["encoder, now (each distinct rendering once)"]
    per = {k: v[0] / max(v[1], 1) for k, v in cost.items()}
    print(
        f"\nEncoder images: {cost['encoder, issue 9 (each sample' + chr(39) + 's views)'][1]} before, {enc[1]} now "
        f"({cost['encoder, issue 9 (each sample' + chr(39) + 's views)'][1] / enc[1]:.1f}x fewer); "
        f"probabilities and IoUs {'identical' if same else 'NOT identical'} to issue 9's; "
        f"GRU + decoder {old_dec:.1f} s before, {cost['GRU + decoder'][0]:.1f} s now.\n"
    )
    print(
        "Extrapolated from these per-unit costs (sequential sums, one process; the pool runs the F-scores "
        "beside the network):\n"
    )
    print("| split | encoder (min) | GRU + decoder (min) | IoU (min) | F-scores (core-min) |")
    print("|---|---|---|---|---|")
    for name, (test, val, _) in SPLITS.items():
        n_views = len(args.views)
        encoder = (test + val) * per["encoder, now (each distinct rendering once)"]
        decoder = (test * n_views + val) * per["GRU + decoder"]
        fscores = test * (n_views + 1) * per["F-score@1% (pool process, inline here)"]
        iou = (test * n_views + val) * per["IoU at 19 thresholds, now (one histogram)"]
        print(f"| {name} | {encoder / 60:.1f} | {decoder / 60:.1f} | {iou / 60:.1f} | {fscores / 60:.1f} |")

    iou_same = all(np.array_equal(new[v].iou, prev[v][0]) for v in args.views)
    fs_diff = max(float(np.abs(new[v].fscore[0.3] - prev[v][1]).max()) for v in args.views)
    print("\n| path (end to end, F-scores in the pool) | total (s) | ms per sample and view count | speed-up |")
    print("|---|---|---|---|")
    base = t_oldest if oldest is not None else t_prev
    if oldest is not None:
        print(
            f"| before issue 9: a forward per view count, F-score inline | {t_oldest:.1f} | "
            f"{1000 * t_oldest / units:.1f} | 1.0 |"
        )
    print(
        f"| issue 9: each batch encodes its samples' views | {t_prev:.1f} | {1000 * t_prev / units:.1f} | "
        f"{base / t_prev:.2f} |"
    )
    print(
        f"| now: each distinct rendering encoded once | {t_new:.1f} | {1000 * t_new / units:.1f} | {base / t_new:.2f} |"
    )
    print(
        f"\nNow against issue 9: IoU {'identical' if iou_same else 'DIFFERENT'}, largest F-score difference "
        f"{fs_diff:.2g}."
    )


if __name__ == "__main__":
    main()

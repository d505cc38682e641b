"""``r2n2-eval``: evaluate a checkpoint on a split, as papers report it (see ``r2n2.evaluation.report``).

    r2n2-eval ckpt=outputs/train/<run>/checkpoints/best.ckpt
    r2n2-eval ckpt=... data=shapenet data.source.root=/data/ShapeNet data.source.taxonomy=ShapeNet.json

Writes eval.json, eval.md and figures into its output folder and prints the table.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from r2n2.data.errors import DataError
from r2n2.evaluation.baselines import object_occupancy
from r2n2.train.checkpoint import CheckpointError, load_module
from r2n2.train.malloc import keep_freed_memory
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

# protocol.samples: every sample | one per object, renderings 00..n-1 | one per object, renderings drawn
SAMPLES = ("all", "first_views", "random_views")


def _datamodule(data_cfg: dict, eval_views: int, cfg: DictConfig):
    data_cfg = {
        **data_cfg,
        "eval_views": eval_views,
        "eval_batch_size": cfg.batch_size,
        "num_workers": 0,
        "persistent_workers": False,
    }
    dm = hydra.utils.instantiate(data_cfg, _recursive_=True)
    dm.prepare_data()
    dm.setup()
    return dm


def evaluate(cfg: DictConfig) -> dict:
    from r2n2.evaluation.fscore import FScorer

    where = cfg.fscore.get("on", "auto")
    if where not in ("auto", "pool", "device"):
        raise ValueError(f"fscore.on={where!r}: expected auto, pool or device")
    device = _device(cfg)
    if where == "device" or (where == "auto" and device.type == "cuda" and cfg.fscore.level == "what3d"):
        from r2n2.evaluation.fscore_device import DeviceFScorer

        scorer = DeviceFScorer(device, cfg.fscore.points, cfg.fscore.distance, cfg.fscore.level)
    else:
        scorer = FScorer(
            cfg.fscore.workers, cfg.fscore.points, cfg.fscore.distance, cfg.fscore.level
        )  # first: its processes fork
    try:
        return _evaluate(cfg, scorer)
    finally:
        scorer.close()


def _evaluate(cfg: DictConfig, scorer) -> dict:
    """Scores ``cfg.ckpt`` under ``cfg.protocol``; writes eval.json, eval.md (and figures); returns
    eval.json's content."""
    from r2n2.evaluation import report as E
    from r2n2.evaluation import scoring as S

    module, ckpt = load_module(cfg.ckpt)
    data_cfg = _data_config(cfg, ckpt["hyper_parameters"].get("data"))
    if not data_cfg:
        raise CheckpointError(f"{cfg.ckpt}: holds no data config; choose one, e.g. data=shapenet data.source.root=...")
    device = _device(cfg)
    dtype = _autocast_dtype(cfg, device)
    proto = cfg.protocol
    thresholds, t = _protocol_thresholds(proto)
    dm1, views, samples = _scored_samples(cfg, data_cfg, proto)
    cats = samples.category

    result = {
        "checkpoint": str(cfg.ckpt),
        "protocol": OmegaConf.to_container(proto),
        "split": cfg.split,
        "num_samples": len(samples),
        "threshold": t,
        "thresholds": list(thresholds),
        "model": {},
        "baselines": {},
    }
    val_samples = (
        S.all_samples(dm1.datasets["val"], 1)
        if proto.choose_threshold == "val" and "val" in dm1.datasets and cfg.split != "val"
        else None
    )
    scored = tuple(sorted(set(thresholds) | {float(g) for g in E.SELECTION_GRID}))
    # the val-chosen threshold and the figures are read at 1 view: score it even where `views` leaves it out
    run_views = sorted(set(views) | {1})
    fscores = len(run_views) + (val_samples is not None)  # per sample: t at each view count (+ val's t at 1)
    baselines = 5 if cfg.recognition else 2
    progress = S.Progress(
        (S.network_work(val_samples, [1], 0) if val_samples is not None else 0)
        + S.network_work(samples, run_views, fscores)
        + 2 * baselines * len(samples),
        f"r2n2-eval {cfg.split} ({len(samples)} samples x {len(run_views)} view counts)",
        cfg.progress,
    )
    selection = None
    if val_samples is not None:
        selection = _threshold_on_val(module.net, val_samples, device, dtype, cfg.batch_size, progress)
    fscore_at = {v: (t,) for v in run_views}
    if selection is not None:
        fscore_at[1] = tuple(sorted({t, selection["threshold"]}))
        if selection["threshold"] == t:
            progress.add(-len(samples))  # one F-score at 1 view, not two
    res = S.score_network(
        module.net, samples, run_views, scored, fscore_at, scorer, device, dtype, cfg.batch_size, progress
    )
    for v in views:
        r = res[v]
        scores = E.Scores(cats, thresholds, np.stack([r.iou_at(x) for x in thresholds], 1), r.fscore[t], t)
        result["model"][str(v)] = scores.summary()
        log.info("%d view(s): IoU@%g %.4f", v, t, result["model"][str(v)][f"iou@{t:g}"]["mean_over_samples"])
    result["threshold_selection"] = _selection_result(selection, proto, res[1], cats, views, thresholds, result)

    gts = object_occupancy(samples.dataset)
    for name, (table, index) in _baseline_predictions(dm1.datasets["train"], samples, cfg, device).items():
        r = S.score_indexed(table, index, samples, thresholds, (t,), scorer, progress, gts)
        result["baselines"][name] = E.Scores(cats, thresholds, r.iou, r.fscore[t], t).summary()
    progress.close()  # (left open on an error: the bar shows where it stopped)

    out_dir = Path(cfg.paths.output_dir)
    report = E.markdown_report(result)
    with atomic_write(out_dir / "eval.json", "w") as f:
        json.dump(result, f, indent=2)
    with atomic_write(out_dir / "eval.md", "w") as f:
        f.write(report)
    if cfg.figures:
        _figures(out_dir, module, samples, res[1], scored, t, device, dtype, cfg)
    print(report)
    print(f"[r2n2-eval] wrote {out_dir / 'eval.json'}, {out_dir / 'eval.md'}")
    return result


def _autocast_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 where ``cfg.precision`` (``auto``: as training would choose on ``device``) is bf16."""
    precision = str(cfg.precision)
    if precision == "auto":
        from r2n2.train.accelerator import choose

        precision = choose("gpu" if device.type == "cuda" else "cpu", cuda=device.type == "cuda")["precision"]
    return torch.bfloat16 if precision in ("bf16", "bf16-mixed") else None


def _protocol_thresholds(proto: DictConfig) -> tuple[tuple[float, ...], float]:
    """The protocol's thresholds and its headline threshold, checked."""
    if proto.samples not in SAMPLES or proto.choose_threshold not in ("val", "test", "none"):
        raise ValueError(
            f"protocol={proto.name}: samples must be {'|'.join(SAMPLES)} and choose_threshold "
            f"val|test|none, got {proto.samples!r} and {proto.choose_threshold!r}"
        )
    thresholds, t = tuple(float(x) for x in proto.thresholds), float(proto.threshold)
    if t not in thresholds:
        raise ValueError(f"protocol={proto.name}: threshold {t} is not one of thresholds {list(thresholds)}")
    return thresholds, t


def _scored_samples(cfg: DictConfig, data_cfg: dict, proto: DictConfig) -> tuple:
    """``(dm1, views, samples)``: the data at one view per sample (its train and val splits serve the
    baselines and the threshold choice), the view counts to score, and the protocol's samples of
    ``cfg.split`` from one dataset that holds every view they need."""
    dm1 = _datamodule(data_cfg, 1, cfg)
    if cfg.split not in dm1.datasets or "train" not in dm1.datasets:
        raise DataError(None, f"the data has no {cfg.split} or train split (splits: {sorted(dm1.datasets)})")
    most = dm1.min_views(cfg.split)  # views of the object with the fewest in this split
    views = sorted({int(v) for v in cfg.views if 1 <= int(v) <= most})
    if not views:
        raise ValueError(f"views={list(cfg.views)}: the {cfg.split} split has objects with only {most} view(s)")
    # one dataset with every view of its objects serves all view counts (and the first-views protocols)
    held = max(views[-1], 2 if proto.samples != "all" and most >= 2 else 1)
    split = (dm1 if held == 1 else _datamodule(data_cfg, held, cfg)).datasets[cfg.split]
    return dm1, views, _samples(proto, split, views[-1])


def _threshold_on_val(net, val_samples, device, dtype, batch_size: int, progress) -> dict:
    """The threshold of ``SELECTION_GRID`` with the best mean val IoU at one view."""
    from r2n2.evaluation import report as E
    from r2n2.evaluation import scoring as S

    val = S.score_network(net, val_samples, [1], E.SELECTION_GRID, {}, None, device, dtype, batch_size, progress)[1]
    mean = val.iou.mean(0)
    best = int(np.argmax(mean))
    return {
        "chosen_on": "val",
        "threshold": float(E.SELECTION_GRID[best]),
        "val_iou": float(mean[best]),
        "grid": [float(g) for g in E.SELECTION_GRID],
    }


def _selection_result(selection, proto, one_view, cats, views, thresholds, result) -> dict | None:
    """eval.json's ``threshold_selection``: the val-chosen threshold with its test figures at one view
    (``one_view``: the network's scores at 1 view), or the best threshold on test per view count."""
    from r2n2.evaluation import report as E

    if selection is not None:
        ts = selection["threshold"]
        sel = E.Scores(cats, (ts,), one_view.iou_at(ts)[:, None], one_view.fscore[ts], ts).summary()
        return {
            **selection,
            "test_iou": sel[f"iou@{ts:g}"]["mean_over_samples"],
            "test_iou_class_mean": sel[f"iou@{ts:g}"]["mean_of_category_means"],
            "test_fscore": sel["fscore@1%"]["mean_over_samples"],
        }
    if proto.choose_threshold == "test":
        per_views = {}
        for v in views:
            means = {x: result["model"][str(v)][f"iou@{x:g}"]["mean_over_samples"] for x in thresholds}
            tb = max(means, key=means.get)
            per_views[str(v)] = {"threshold": tb, "test_iou": means[tb]}
        return {"chosen_on": "test", "per_views": per_views}
    return None


def _device(cfg: DictConfig) -> torch.device:
    return torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )


def _data_config(cfg: DictConfig, trained: dict | None) -> dict | None:
    """The data to evaluate on: ``data=...`` if given, else the checkpoint's own (``trained``).

    A checkpoint split with another ``data.split_version`` than the composed config's keeps its own
    (unless ``data.split_version=`` is on the command line), and a data config whose splits may put
    the checkpoint's training objects into the scored split is warned about."""
    from hydra.core.hydra_config import HydraConfig

    from r2n2.data.splits import split_mismatch, split_version_of

    if not cfg.get("data"):
        return trained
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    given = HydraConfig.initialized() and any(
        o.startswith("data.split_version=") for o in HydraConfig.get().overrides.task
    )
    if trained and not given and split_version_of(trained) != split_version_of(data_cfg):
        data_cfg["split_version"] = split_version_of(trained)
        log.info("data.split_version=%d: the version the checkpoint was split with", data_cfg["split_version"])
    why = split_mismatch(trained, data_cfg)
    if why:
        log.warning("%s", why)
    return data_cfg


def _samples(proto: DictConfig, split, views: int):
    """The samples ``proto`` scores (``conf/protocol``), seeing up to ``views`` views each."""
    from r2n2.evaluation import scoring as S

    if proto.get("composite", "blend") not in ("blend", "binary"):
        raise ValueError(f"protocol={proto.name}: composite must be blend|binary, got {proto.composite!r}")
    binary = proto.get("composite", "blend") == "binary"
    if proto.samples == "all":
        return S.all_samples(split, views)  # (the input every model here is trained on: blended)
    if proto.samples == "first_views":
        return S.first_views(split, views, binary)
    return S.random_views(split, views, int(proto.get("view_seed", 0)), binary)


def _baseline_predictions(train, samples, cfg: DictConfig, device) -> dict:
    """{name: (table (P, R, R, R), index (N,))}: the predictors that see no image, then (with
    ``recognition=true``) the recognition baselines of ``r2n2.evaluation.recognition``."""
    from r2n2.evaluation.baselines import mean_shape_for, mean_shapes

    overall, per_category = mean_shapes(train)
    names, index = np.unique(samples.category, return_inverse=True)
    out = {
        "global mean shape": (overall[None], np.zeros(len(samples), np.int64)),
        "category mean shape": (mean_shape_for(per_category, list(names)), index.reshape(-1)),
    }
    if cfg.recognition:
        from r2n2.evaluation import recognition

        fitted = recognition.fit(train, device=device)
        out.update(recognition.predict(fitted, samples.dataset, samples.slots[:, 0], samples.obj, device))
    return out


def _figures(out_dir: Path, module, samples, first, scored, t: float, device, dtype, cfg) -> None:
    """iou_vs_threshold.png (1 view, the 0.05 grid), worst.png and best.png (1 view at ``t``) and the
    same samples in reconstructions.html."""
    from r2n2.data.transforms import to_images
    from r2n2.evaluation.report import SELECTION_GRID
    from r2n2.evaluation.scoring import ViewCounts
    from r2n2.vis import figures as viz
    from r2n2.vis import viewer

    cats = samples.category
    curves = np.stack([first.iou_at(g) for g in SELECTION_GRID], 1)
    viz.save(viz.iou_threshold_figure(np.array(SELECTION_GRID), curves, cats), out_dir / "iou_vs_threshold.png")
    order = np.argsort(first.iou_at(t), kind="stable")
    k = min(int(cfg.figure_samples), len(order))
    grids = object_occupancy(samples.dataset)  # (M, R, R, R) bool
    rows = []  # also as reconstructions.html: rotatable 3D voxels (r2n2/vis/viewer.py)
    for name, idx in (("worst", order[:k]), ("best", order[::-1][:k].copy())):
        images = to_images(samples.rgba(idx, 1).to(device))
        probs = ViewCounts(module.net.eval().to(device), [1], dtype)(images)[1].cpu()
        titles = [f"{name} ({cats[i]})" for i in idx]
        gts = grids[torch.from_numpy(samples.obj[idx])].float()
        viz.save(viz.reconstruction_figure(images[:, 0].cpu(), gts, probs, t, titles), out_dir / f"{name}.png")
        rows += viewer.samples(titles, samples.rgba(idx, 1), gts, probs, t)
    viewer.write_page(
        out_dir / "reconstructions.html",
        rows,
        "r2n2-eval: worst and best reconstructions",
        f"One input view per sample, IoU at p >= {t:g}.",
    )


# conf/ sits at the project root (an editable install); an absolute path works however we are called
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()  # as train.py does (r2n2.train.extras.prepare_run)
    try:
        evaluate(cfg)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as e:  # bad input, not a bug: one line
        print(f"r2n2-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

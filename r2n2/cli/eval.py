"""``r2n2-eval``: evaluate a checkpoint on a split, as papers report it (see ``r2n2.evaluation``).

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

from r2n2.atomic import atomic_write
from r2n2.checkpoint import CheckpointError, load_module
from r2n2.data.errors import DataError

log = logging.getLogger(__name__)


def _datamodule(data_cfg: dict, eval_views: int, cfg: DictConfig):
    data_cfg = {**data_cfg, "eval_views": eval_views, "eval_batch_size": cfg.batch_size,
                "num_workers": cfg.num_workers, "persistent_workers": False}
    dm = hydra.utils.instantiate(data_cfg, _recursive_=True)
    dm.prepare_data()
    dm.setup()
    return dm


def evaluate(cfg: DictConfig) -> dict:
    from r2n2 import evaluation as E

    module, ckpt = load_module(cfg.ckpt)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else ckpt["hyper_parameters"].get("data")
    if not data_cfg:
        raise CheckpointError(f"{cfg.ckpt}: holds no data config; choose one, e.g. data=shapenet data.source.root=...")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    dtype = torch.bfloat16 if str(cfg.precision) in ("bf16", "bf16-mixed") else None
    thresholds, t = tuple(float(x) for x in cfg.thresholds), float(cfg.threshold)
    out_dir = Path(cfg.paths.output_dir)

    dm1 = _datamodule(data_cfg, 1, cfg)
    if cfg.split not in dm1.datasets or "train" not in dm1.datasets:
        raise DataError(None, f"the data has no {cfg.split} or train split (splits: {sorted(dm1.datasets)})")
    split = dm1.datasets[cfg.split]
    gts = E.sample_voxels(split)
    gt_points = _object_points(split, cfg)

    result = {"checkpoint": str(cfg.ckpt), "split": cfg.split, "num_samples": len(split), "threshold": t,
              "thresholds": list(thresholds), "model": {}, "baselines": {}}
    selection = None
    if "val" in dm1.datasets and cfg.split != "val":
        probs_val, gts_val, _ = E.predict(module.net, dm1.val_dataloader(), device, dtype)
        tv, iou_v = E.select_threshold(probs_val, gts_val)
        selection = {"threshold": tv, "val_iou": iou_v, "grid": list(E.SELECTION_GRID)}

    most = dm1.min_views(cfg.split)  # views of the object with the fewest in this split
    views = sorted({int(v) for v in cfg.views if 1 <= int(v) <= most})
    first = None
    for v in views:
        dm = dm1 if v == 1 else _datamodule(data_cfg, v, cfg)
        loader = dm.test_dataloader() if cfg.split == "test" else dm.val_dataloader() if cfg.split == "val" else \
            dm._loader(cfg.split, train=False)
        probs, gts_v, cats = E.predict(module.net, loader, device, dtype)
        s = E.score(probs, gts_v, cats, thresholds, t, gt_points, cfg.fscore.distance, cfg.fscore.points)
        result["model"][str(v)] = s.summary()
        if v == 1:
            first = (probs, cats, s)
            if selection is not None:
                sel = E.score(probs, gts_v, cats, (selection["threshold"],), selection["threshold"], gt_points,
                              cfg.fscore.distance, cfg.fscore.points).summary()
                key = f"iou@{selection['threshold']:g}"
                selection.update(test_iou=sel[key]["mean_over_samples"],
                                 test_iou_class_mean=sel[key]["mean_of_category_means"],
                                 test_fscore=sel["fscore@1%"]["mean_over_samples"])
        log.info("%d view(s): IoU@%g %.4f", v, t, result["model"][str(v)][f"iou@{t:g}"]["mean_over_samples"])

    for name, probs in E.baselines(dm1.datasets["train"], split).items():
        cats = np.array([split.objects[o]["category"] for o in split.samples[:, 0]])
        result["baselines"][name] = E.score(probs, gts, cats, thresholds, t, gt_points, cfg.fscore.distance,
                                            cfg.fscore.points).summary()
    result["threshold_selection"] = selection

    report = E.markdown_report(result)
    with atomic_write(out_dir / "eval.json", "w") as f:
        json.dump(result, f, indent=2)
    with atomic_write(out_dir / "eval.md", "w") as f:
        f.write(report)
    if cfg.figures and first is not None:
        _figures(out_dir, module, split, gts, first, thresholds, cfg)
    print(report)
    print(f"[r2n2-eval] wrote {out_dir / 'eval.json'}, {out_dir / 'eval.md'}")
    return result


def _object_points(split, cfg: DictConfig) -> list[np.ndarray]:
    """Ground-truth surface points per sample, computed once per object."""
    from r2n2.baselines import object_voxels
    from r2n2.metrics import surface_points

    per_object = [surface_points(g, cfg.fscore.points, seed=1) for g in object_voxels(split).numpy() > 0.5]
    return [per_object[o] for o in split.samples[:, 0]]


def _figures(out_dir: Path, module, split, gts, first, thresholds, cfg) -> None:
    from r2n2 import viz
    from r2n2.data.datamodule import collate
    from r2n2.data.transforms import to_images
    from r2n2.metrics import voxel_iou_thresholds

    probs, cats, s = first
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    curves = voxel_iou_thresholds(probs.float(), gts, torch.tensor(grid)).numpy()
    viz.save(viz.iou_threshold_figure(grid, curves, cats), out_dir / "iou_vs_threshold.png")
    order = np.argsort(s.iou[:, list(s.thresholds).index(float(cfg.threshold))])
    k = min(int(cfg.figure_samples), len(order))
    for name, idx in (("worst", order[:k]), ("best", order[::-1][:k].copy())):
        batch = collate([split[int(i)] for i in idx])
        titles = [f"{c} ({cats[i]})" for c, i in zip([name] * k, idx)]
        images = to_images(batch["rgba"][:, :1])[:, 0]
        fig = viz.reconstruction_figure(images, batch["voxels"], probs[idx].float(), cfg.threshold, titles)
        viz.save(fig, out_dir / f"{name}.png")


# conf/ sits at the project root (an editable install); an absolute path works however we are called
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as e:  # bad input, not a bug: one line
        print(f"r2n2-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

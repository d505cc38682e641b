"""The main job, called by ``train.py``: build data, model and trainer from the Hydra config, fit,
test the best checkpoint, compare with the mean-shape baseline and write ``metrics.json``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from r2n2.evaluation.baselines import baseline_iou, mean_shapes
from r2n2.evaluation.headline import degeneracy_warnings, headline
from r2n2.evaluation.spread import PredictionSpread
from r2n2.train.accelerator import resolve_trainer
from r2n2.train.callbacks import TrainThroughput
from r2n2.train.checkpoint import load_checkpoint
from r2n2.train.checkpoint_io import AtomicCheckpointIO
from r2n2.train.cluster import needs_own_run, requeued_checkpoint, train_in_child_run
from r2n2.train.extras import prepare_run
from r2n2.train.fit_record import RECORD, checkpoint_progress, read_record, write_record
from r2n2.train.module import ReconstructionModule
from r2n2.train.resume import FINISHED_ADVICE, ResumeError, finished, restore_config
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
# metrics.json keys that measure the machine, not the run: they differ between any two runs of one config
TIMING_KEYS = (
    "fit_seconds",
    "wall_seconds",
    "train_samples_per_second",
    "train_samples_per_second_by_epoch",
    "epoch_seconds_by_epoch",
)
MONITOR = "val/iou_best"  # what train.py returns to sweepers: the best val IoU@0.3


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}


def resolve_resume(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """(config to run, checkpoint to continue from). ``resume=<run>`` restores that run's saved config
    (``r2n2.train.resume``), outputs going back into its folder; ``ckpt_path=<file>`` is checked to be a
    readable r2n2 checkpoint; otherwise (cfg, None)."""
    if cfg.get("resume"):
        return restore_config(cfg)
    if cfg.get("ckpt_path"):
        load_checkpoint(cfg.ckpt_path)  # CheckpointError naming the file if it is not one
    # a requeued SLURM job continues from its own folder's last.ckpt (r2n2/train/cluster.py)
    return cfg, cfg.get("ckpt_path") or requeued_checkpoint(cfg.paths.output_dir)


def build(cfg: DictConfig):
    """Instantiate (datamodule, module, trainer, throughput callback) from the config."""
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=True)
    trainer_cfg = resolve_trainer(cfg.trainer)
    module_cfg = _plain(cfg.get("module"))
    if module_cfg.get("cuda_graph"):
        # the module's own whole step clips (Lightning clips only in its automatic optimisation)
        if trainer_cfg.get("gradient_clip_algorithm") not in (None, "norm"):
            raise ValueError(
                "module.cuda_graph=true clips the gradient norm; trainer.gradient_clip_algorithm="
                f"{trainer_cfg.gradient_clip_algorithm} is not supported with it"
            )
        module_cfg["gradient_clip_val"] = trainer_cfg.get("gradient_clip_val")
        trainer_cfg.gradient_clip_val = None
    module = ReconstructionModule(
        net=_plain(cfg.model),
        optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.scheduler) or None,
        data=_plain(cfg.data),
        **module_cfg,
    )
    # logger=<option> is a dict of named loggers (tensorboard, csv; logger=many has both)
    logger = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c] or False
    callbacks = [
        hydra.utils.instantiate(c)
        for name, c in (cfg.get("callbacks") or {}).items()
        if c and not (name == "lr_monitor" and not logger)
    ]
    callbacks = [c for c in callbacks if c is not None]  # a factory may decline (progress_bar when disabled)
    throughput = TrainThroughput()
    # every checkpoint written atomically (temp file, fsync, rename), whatever other plugins are configured
    plugins = [hydra.utils.instantiate(p) for p in (cfg.trainer.get("plugins") or [])] + [AtomicCheckpointIO()]
    trainer = hydra.utils.instantiate(
        trainer_cfg, callbacks=callbacks + [throughput, PredictionSpread()], logger=logger, plugins=plugins
    )
    return datamodule, module, trainer, throughput


def _scalars(metrics: dict) -> dict:
    """Scalar tensors -> floats, without Lightning's duplicate ``_step``/``_epoch`` keys."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if (torch.is_tensor(v) and v.numel() == 1 or isinstance(v, float)) and not k.endswith(("_step", "_epoch"))
    }


def train(cfg: DictConfig) -> dict:
    """Run the main job; returns the metrics written to ``metrics.json`` in the run folder."""
    if needs_own_run(cfg):  # DDP inside a Hydra multirun: the job's ranks run in a train.py run of its own
        return train_in_child_run(METRICS_FILE)
    cfg, ckpt_path = resolve_resume(cfg)
    prepare_run(cfg)
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule, module, trainer, throughput = build(cfg)
    log.info("model %s: %s parameters", cfg.model._target_.rsplit(".", 1)[-1], f"{module.num_parameters:,}")

    start = time.perf_counter()
    record = fit_record_to_continue(cfg, ckpt_path)
    if record is None:
        metrics, best = fit(trainer, module, datamodule, throughput, ckpt_path)
    else:  # stopped after fitting (killed or requeued while testing): the fit's own figures
        log.info(
            "%s: training had finished; testing the best checkpoint, with the fit's figures from %s",
            ckpt_path,
            Path(ckpt_path).parent / RECORD,
        )
        metrics, best = record["metrics"], record["best"] or ckpt_path  # no best callback: the fit's last weights

    if cfg.get("test", True) and trainer.limit_test_batches != 0:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update(_scalars(tested[0]) if tested else {})
        metrics.update(next(c for c in trainer.callbacks if isinstance(c, PredictionSpread)).compute())
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    if trainer.global_rank != 0:
        return metrics
    if "test/iou" in metrics:  # the baselines score the test split: only beside a tested model (test=true)
        metrics.update(baselines(datamodule))
    warnings = degeneracy_warnings(metrics)
    metrics["degenerate"] = bool(warnings)
    with atomic_write(out_dir / METRICS_FILE, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    log_final_hparams(trainer.loggers, cfg, metrics)
    log.info("metrics written to %s", out_dir / METRICS_FILE)
    for warning in warnings:
        log.warning("degenerate model: %s", warning)
    line = headline(metrics)
    if line:  # the run's last line: the model against both mean shapes
        log.info(line)
    return metrics


def fit_record_to_continue(cfg: DictConfig, ckpt_path: str | None) -> dict | None:
    """The fit record (``r2n2.train.fit_record``) of ``ckpt_path`` when that checkpoint ended its fit and
    leaves nothing to train under ``cfg``; None when there is training to do. ``ResumeError`` when
    nothing is left to train and no record says what the fit measured."""
    if not ckpt_path:
        return None
    epoch, step = checkpoint_progress(ckpt_path)
    if not finished(cfg, epoch, step):
        return None
    record = read_record(ckpt_path, step)
    if record is None:  # Lightning would skip fit and metrics.json would lack the train/val figures
        path = Path(ckpt_path).parent / RECORD
        what = (
            (
                "was written at the end of another fit than this checkpoint's (a best.ckpt from before the "
                "last epoch, or a copied checkpoint)"
            )
            if path.is_file()
            else "is missing"
        )
        raise ResumeError(
            f"{ckpt_path}: training had finished (epoch {epoch + 1}, step {step}) and "
            f"{path} (its train/val figures) {what}; {FINISHED_ADVICE}"
        )
    return record


def fit(
    trainer: L.Trainer, module, datamodule, throughput: TrainThroughput, ckpt_path: str | None
) -> tuple[dict, str | None]:
    """Fit; returns (the fit's train/val metrics and timings, the best checkpoint by val IoU or None),
    also written to the fit record by global rank 0."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith(("train/", "val/"))}
    # the best-by-val-IoU checkpoint's own path: "best" would leave Lightning to pick among the
    # two ModelCheckpoint callbacks (best and last) and warn that it took the first
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if ckpt is not None and ckpt.best_model_score is not None:
        metrics["val/iou_best"] = float(ckpt.best_model_score)
    metrics.update(
        {
            "parameters": module.num_parameters,
            "epochs": trainer.current_epoch,
            "fit_seconds": round(time.perf_counter() - start, 2),
            "train_samples_per_second": round(throughput.samples_per_second, 2),
            "train_samples_per_second_by_epoch": [round(v, 2) for v in throughput.by_epoch],
            "epoch_seconds_by_epoch": [round(v, 2) for v in throughput.epoch_seconds],
        }
    )
    # only beside checkpoints (fast_dev_run saves none, and leaves no folder)
    if trainer.global_rank == 0 and ckpt is not None and Path(ckpt.dirpath).is_dir():
        write_record(ckpt.dirpath, metrics, best, trainer.global_step)
    return metrics, best


def log_final_hparams(loggers: list, cfg: DictConfig, metrics: dict) -> None:
    """The flat config to every logger; TensorBoard's hparams tab also gets the final metrics."""
    from lightning.pytorch.loggers import TensorBoardLogger

    hp = {
        f"hp/{k}": v
        for k, v in metrics.items()
        if k in ("test/iou", "test/loss", "val/iou", "val/loss", "train/loss", "degenerate")
        or k.startswith(("baseline/", "test/pred_"))
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(_flat(_plain(cfg)), hp)
        else:
            logger.log_hyperparams(_flat(_plain(cfg)))
        logger.finalize("success")  # flush: this is written after Lightning closed the run


def _train_and_test(datamodule) -> tuple:
    """The datamodule's train and test datasets (None where it has none), set up if need be."""
    if not datamodule.datasets:
        datamodule.setup()
    return datamodule.datasets.get("train"), datamodule.datasets.get("test")


def mean_shape_baseline(datamodule) -> dict:
    """Test IoU@0.3 of the training set's mean shape, thresholded: global and per category."""
    train, test = _train_and_test(datamodule)
    if train is None or test is None:
        return {}
    overall, per_category = mean_shapes(train)
    return {
        "baseline/global_mean_shape_test_iou": float(baseline_iou(overall, test).mean()),
        "baseline/category_mean_shape_test_iou": float(baseline_iou(per_category, test).mean()),
    }


def baselines(datamodule) -> dict:
    """What a tested model is measured against: the mean shapes and the recognition baselines
    (clustering, retrieval, oracle nearest neighbour: r2n2/evaluation/recognition.py)."""
    from r2n2.evaluation.recognition import baseline_metrics

    train, test = _train_and_test(datamodule)
    if train is None or test is None:
        return {}
    return {**mean_shape_baseline(datamodule), **baseline_metrics(train, test)}


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> flat {"a.b": value} with TensorBoard-friendly values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out

"""``resume=<run>``: continue a run with the configuration it was started with.

The run's saved Hydra config (``<run>/.hydra/config.yaml``: data, model, optimizer, trainer, seed,
everything) is restored; of this command line's overrides only those in ``RESUMABLE`` are applied.
Any other override is refused with a ``ResumeError`` naming the key, unless it repeats the saved
value (so re-running the original command with ``resume=<run>`` added works). The checkpoint's own
record of the network and the data (its ``hyper_parameters``) is checked against the restored config
too, so a run folder whose ``.hydra`` was overwritten cannot be continued on other data either.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from r2n2.train.checkpoint import CheckpointError, load_checkpoint
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

# Keys (and everything under them) that a resume may change: how long to train, what to log and
# show, and data-loading knobs that do not change which samples or numbers the model sees.
RESUMABLE = (
    "resume",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",  # train longer (or stop sooner)
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "logger",  # logger=none, logger.save_dir=...
    "test",  # test the best checkpoint at the end or not
    "module.viz_every_n_epochs",
    "module.viz_samples",  # TensorBoard figures only
    "data.num_workers",
    "data.persistent_workers",
    "data.pin_memory",  # loader processes (resume-exact for any)
    "data.device_data",
    "data.device_data_fraction",  # the input path: both give the same batches
    "data.pack_workers",
    "data.verify_cache",
    "data.cache_dir",  # how and where the cache is built and checked
    "extras",  # console conveniences (printing the config, rich, warnings)
)
# data config keys whose value may differ between the checkpoint and the resumed run (see RESUMABLE)
RUNTIME_DATA_KEYS = tuple(k.split(".", 1)[1] for k in RESUMABLE if k.startswith("data."))


class ResumeError(ValueError):
    """``resume=<run>`` cannot continue that run as asked; ``str()`` reads ``"<path>: <what>"``."""


def _allowed(key: str) -> bool:
    return any(key == a or key.startswith(a + ".") for a in RESUMABLE)


def _node(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


def _command_line() -> tuple[list, dict]:
    """This invocation's task overrides (parsed) and group choices; empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return [], {}
    hc = HydraConfig.get()
    return OverridesParser.create().parse_overrides(list(hc.overrides.task)), dict(hc.runtime.choices)


def _rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def _log_into(run: Path) -> None:
    """Append this process's log to the run's own log file too (Hydra logs into a new folder of this
    command's own), so the run's train.log goes on where it stopped and ends with the resumed headline."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    target = run / (Path(files[0].baseFilename).name if files else "train.log")
    if any(Path(h.baseFilename) == target for h in files):
        return
    handler = logging.FileHandler(target, mode="a")
    if files:
        handler.setFormatter(files[0].formatter)
        handler.setLevel(files[0].level)
    root.addHandler(handler)
    log.info("resuming %s: logging into %s", run, target)


def run_folder(resume: str) -> tuple[Path, Path]:
    """``resume=<run>`` -> (run folder, its checkpoints/last.ckpt), or ``ResumeError`` saying what is missing."""
    run = Path(resume).expanduser().resolve()
    if not run.is_dir():
        raise ResumeError(
            f"{run}: the run folder does not exist (resume= names a folder like outputs/train/<date>)"
            if not run.exists()
            else f"{run}: not a folder (resume= names a run folder)"
        )
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ResumeError(
            f"{ckpt}: not found: the run was stopped before its first checkpoint, or {run.name} is "
            "not a training run; start it again with its original command"
        )
    return run, ckpt


# where the modules of a flat r2n2/ went when the package was grouped by concept: a run folder saved
# before names its callbacks and plugins by the old paths (``.hydra/config.yaml``)
MOVED_MODULES = {
    f"r2n2.{old}": f"r2n2.{new}"
    for old, new in {
        "atomic": "utils.atomic",
        "machine": "utils.machine",
        "metrics": "evaluation.metrics",
        "fscore": "evaluation.fscore",
        "fscore_device": "evaluation.fscore_device",
        "scoring": "evaluation.scoring",
        "baselines": "evaluation.baselines",
        "recognition": "evaluation.recognition",
        "headline": "evaluation.headline",
        "evaluation": "evaluation.report",
        "module": "train.module",
        "step": "train.step",
        "losses": "train.losses",
        "resume": "train.resume",
        "checkpoint": "train.checkpoint",
        "checkpoint_io": "train.checkpoint_io",
        "callbacks": "train.callbacks",
        "run_callbacks": "train.run_callbacks",
        "fit_record": "train.fit_record",
        "cluster": "train.cluster",
        "distributed": "train.distributed",
        "accelerator": "train.accelerator",
        "malloc": "train.malloc",
        "extras": "train.extras",
        "sweep": "train.sweep",
        "training": "train.run",
        "viz": "vis.figures",
        "viewer": "vis.viewer",
    }.items()
}


def moved_targets(cfg: DictConfig, moves: dict[str, str] = MOVED_MODULES) -> DictConfig:
    """``cfg`` with every ``_target_`` whose module is a key of ``moves`` (by default an old path of
    ``MOVED_MODULES``) renamed to its value; interpolations are kept as written."""

    def visit(node):
        if isinstance(node, dict):
            target = node.get("_target_")
            module, _, name = target.rpartition(".") if isinstance(target, str) else ("", "", "")
            if module in moves:
                node["_target_"] = f"{moves[module]}.{name}"
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)
        return node

    return OmegaConf.create(visit(OmegaConf.to_container(cfg, resolve=False)))


def restore_config(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The config to continue ``cfg.resume`` with, and the checkpoint to continue from.

    cfg: this invocation's composed config (``resume`` set). Returns the run's saved config with this
    command line's resumable overrides applied, ``paths.output_dir`` set to the run folder.
    """
    run, ckpt = run_folder(cfg.resume)
    if cfg.get("ckpt_path"):
        raise ResumeError(
            f"{run}: resume= and ckpt_path= together: resume= continues that run from its last.ckpt; "
            "ckpt_path= starts a new run from a checkpoint; pick one"
        )
    saved_file = run / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        raise ResumeError(f"{saved_file}: not found: cannot restore the run's configuration")
    saved = moved_targets(OmegaConf.load(saved_file))
    saved_choices = {}
    if (run / ".hydra" / "hydra.yaml").is_file():
        saved_choices = dict(OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.choices)

    overrides, choices = _command_line()
    for o in overrides:
        key = o.key_or_group
        if _allowed(key):
            OmegaConf.update(saved, key, None if o.is_delete() else _node(cfg, key), merge=False, force_add=True)
            continue
        if key in choices:  # a config group: the same option as the run's is no change
            same = choices[key] == saved_choices.get(key, choices[key])
        else:
            same = _node(cfg, key) == _node(saved, key)
        if not same:
            raise ResumeError(
                f"{run}: cannot resume with {o.input_line}: {key} is part of the run's saved configuration "
                f"({saved_file}), which a resume keeps; a resume may change only {', '.join(RESUMABLE[1:])}. "
                "To train with other settings, start a new run (ckpt_path=<checkpoint> starts from its weights)"
            )
    with open_dict(saved):
        for key in cfg:  # top-level settings added to the project since the run started (e.g. extras)
            if key not in saved:
                saved[key] = cfg[key]
        saved.resume = None
        saved.paths.output_dir = str(run)
    check_checkpoint_matches(ckpt, saved)  # before anything is written: a refused resume changes nothing
    if _rank_zero():
        # the run's record now says how far it is meant to go (a later plain resume= continues the same way)
        with atomic_write(saved_file, "w") as f:
            f.write(OmegaConf.to_yaml(saved))
        _log_into(run)
    with open_dict(saved):
        saved.resume = str(run)
    return saved, str(ckpt)


# what to do with a run that has nothing left to train
FINISHED_ADVICE = "pass a larger trainer.max_epochs or trainer.max_steps to train longer, or evaluate it with r2n2-eval"


def finished(cfg: DictConfig, epoch: int, step: int) -> bool:
    """True if a checkpoint at (``epoch``, ``step``) leaves nothing to train under ``cfg.trainer``."""
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")
    done_epochs = max_epochs is not None and max_epochs != -1 and epoch + 1 >= max_epochs
    done_steps = max_steps is not None and max_steps > 0 and step >= max_steps
    return done_epochs or done_steps


def check_not_finished(ckpt: Path, cfg: DictConfig, epoch: int, step: int) -> None:
    """``ResumeError`` if the run wrote its metrics.json and a checkpoint at (``epoch``, ``step``) leaves
    nothing to train under ``cfg.trainer``. A run stopped after fitting but before metrics.json (killed
    while testing) goes on: ``r2n2.train.run`` tests it with the fit's record (``r2n2.train.fit_record``)."""
    metrics = Path(cfg.paths.output_dir) / "metrics.json"  # r2n2.train.run.METRICS_FILE
    if finished(cfg, epoch, step) and metrics.is_file():
        max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")
        raise ResumeError(
            f"{ckpt}: the run has finished (epoch {epoch + 1} of trainer.max_epochs={max_epochs}, "
            f"step {step} of trainer.max_steps={max_steps}); {FINISHED_ADVICE}"
        )


def check_checkpoint_matches(ckpt: Path, cfg: DictConfig) -> None:
    """``ResumeError`` if the checkpoint was trained on other data or with another network than ``cfg``,
    or has nothing left to train."""
    try:
        loaded = load_checkpoint(ckpt)
    except CheckpointError as e:
        raise ResumeError(str(e)) from None
    check_not_finished(ckpt, cfg, int(loaded.get("epoch", 0)), int(loaded.get("global_step", 0)))
    hp = loaded["hyper_parameters"]
    mine = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
    }
    theirs = {"model": hp.get("net"), "data": hp.get("data")}
    for part in ("model", "data"):
        if theirs[part] is None:
            continue
        a = {k: v for k, v in mine[part].items() if part != "data" or k not in RUNTIME_DATA_KEYS}
        b = {k: v for k, v in theirs[part].items() if part != "data" or k not in RUNTIME_DATA_KEYS}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ResumeError(
                f"{ckpt}: was trained with other {part} settings than the run's config "
                f"({', '.join(f'{part}.{k}' for k in diff)} differ); refusing to continue it"
            )

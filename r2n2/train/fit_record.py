"""The record of a finished fit, ``checkpoints/fit.json``: what train.py measured while fitting.

A run stopped after its last checkpoint but before ``metrics.json`` (killed while testing, or a SLURM
job requeued by the time-limit signal during the test) has nothing left to train, and Lightning
would skip ``fit`` and leave the run's train/val figures out of metrics.json. With this record the
continued run tests the best checkpoint and writes the same metrics.json as an uninterrupted run.

The record holds the train/val metrics, the fit's timings and the best checkpoint's file name, and
the ``global_step`` of the fit's end: it is used only with a checkpoint written at that same step
(the last.ckpt of that fit). Written atomically by global rank 0 once ``trainer.fit`` returns.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

RECORD = "fit.json"  # beside the checkpoints (conf/callbacks/default.yaml: dirpath)


def checkpoint_progress(ckpt: str | Path) -> tuple[int, int]:
    """(epoch, global_step) stored in a Lightning checkpoint (memory-mapped: the weights are not read)."""
    loaded = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    return int(loaded.get("epoch", 0)), int(loaded.get("global_step", 0))


def write_record(ckpt_dir: str | Path, metrics: dict, best: str | None, global_step: int) -> None:
    """metrics: the fit's train/val figures and timings; best: the best checkpoint's path (or None)."""
    record = {"global_step": global_step, "best": Path(best).name if best else None, "metrics": metrics}
    with atomic_write(Path(ckpt_dir) / RECORD, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)


def read_record(ckpt: str | Path, global_step: int) -> dict | None:
    """The record beside ``ckpt`` (whose ``global_step``, from :func:`checkpoint_progress`, is given) if
    it was written at the end of the fit that wrote ``ckpt`` (same global step), with ``best`` made a
    path (None where the run kept no best checkpoint); otherwise None."""
    path = Path(ckpt).parent / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        step = int(record["global_step"])
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s: not a fit record (%s): ignored", path, e)
        return None
    if step != global_step:
        return None  # a later checkpoint than the record, or a record of another fit
    best = record.get("best")
    record["best"] = str(path.parent / best) if best else None
    return record

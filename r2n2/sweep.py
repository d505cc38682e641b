"""Hydra multirun summary: after a sweep, one table of overrides -> final metrics at the sweep root
(``summary.csv`` and ``summary.md``), read from each job's ``metrics.json``."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from r2n2.atomic import atomic_write

log = logging.getLogger(__name__)

# the columns shown, in order, when a job reports them
COLUMNS = ("val/iou", "val/loss", "test/iou", "test/loss", "train/loss", "baseline/global_mean_shape_test_iou",
           "parameters", "epochs", "wall_seconds", "train_samples_per_second")


def summarize(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """One row per job folder under ``sweep_dir``: the overrides that vary between jobs, and the
    job's metrics.json figures. Also returns the overrides every job shares."""
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if overrides_file.is_file():
            jobs.append((job, list(OmegaConf.load(overrides_file))))
    common = [o for o in jobs[0][1] if all(o in ov for _, ov in jobs)] if jobs else []
    rows = []
    for job, overrides in jobs:
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        row = {"job": job.name, "overrides": " ".join(o for o in overrides if o not in common),
               "status": "ok" if metrics else "failed"}
        row.update({c: metrics.get(c, "") for c in COLUMNS})
        rows.append(row)
    return rows, common


def write_summary(sweep_dir: Path) -> list[dict]:
    rows, common = summarize(sweep_dir)
    if not rows:
        return rows
    fields = list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(sweep_dir / "summary.csv", "w") as f:
        f.write(buf.getvalue())

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"Sweep {sweep_dir}; overrides shared by every job: `{' '.join(common) or '(none)'}`", "",
             "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(cell(r[f]) for f in fields) + " |" for r in rows]
    with atomic_write(sweep_dir / "summary.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_summary(sweep_dir)
            log.info("sweep summary of %d jobs: %s", len(rows), sweep_dir / "summary.md")

"""Hydra multirun summary: after a sweep, one table of overrides -> final metrics at the sweep root
(``summary.csv`` and ``summary.md``), read from each job's ``metrics.json``; and the resume of a
killed optuna search (``hparams_search=optuna``).

Both are Hydra callbacks, run by the process that launched the sweep, so the summary is written at
the sweep root also when the jobs ran elsewhere (``hydra/launcher=submitit_slurm``: the jobs write
into their folders on the shared file system, this process waits for them)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

# the columns shown, in order, when a job reports them
COLUMNS = (
    "val/iou_best",
    "val/iou",
    "val/loss",
    "test/iou",
    "test/loss",
    "train/loss",
    "baseline/global_mean_shape_test_iou",
    "parameters",
    "epochs",
    "wall_seconds",
    "train_samples_per_second",
)


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
        row = {
            "job": job.name,
            "overrides": " ".join(o for o in overrides if o not in common),
            "status": "ok" if metrics else "failed",
        }
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

    lines = [
        f"Sweep {sweep_dir}; overrides shared by every job: `{' '.join(common) or '(none)'}`",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    lines += ["| " + " | ".join(cell(r[f]) for f in fields) + " |" for r in rows]
    scored = [r for r in rows if isinstance(r.get("val/iou_best"), float)]
    if scored:
        best = max(scored, key=lambda r: r["val/iou_best"])
        lines += ["", f"Best val/iou_best: job {best['job']} ({best['val/iou_best']:.4f}): `{best['overrides']}`"]
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


# hydra.sweep.subdir of a resumed search: job number + the trials before it, so that each trial's
# folder is named by its trial number and a rerun never writes into an earlier trial's folder
JOB_OFFSET_RESOLVER = "r2n2.job_offset"
OmegaConf.register_new_resolver(
    JOB_OFFSET_RESOLVER, lambda offset, *, _root_: int(_root_.hydra.job.num) + int(offset), replace=True
)


class ResumeOptunaStudy(Callback):
    """Hydra callback of ``hparams_search=optuna``: before the sweeper starts, create the sweep
    folder (the sqlite study lives in it) and, if the study exists already (the same command run
    again after a search was killed or ended), continue it:

    * trials a killed search left RUNNING are marked FAIL and their parameters queued again;
    * ``n_trials`` becomes the number still missing, so the study ends with ``n_trials`` finished
      trials in all (the plugin would otherwise run ``n_trials`` more);
    * job folders continue the numbering (the plugin restarts at 0, over the earlier trials' folders);
    * the sampler's seed is offset by the trials so far, so it does not draw the same parameters again.

    One search process per study: a trial RUNNING in another live process would be marked failed.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        sweeper = config.hydra.sweeper
        if not sweeper.get("storage") or not sweeper.get("study_name"):
            return
        import optuna
        from optuna.trial import TrialState

        try:
            study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        except KeyError:  # a new study
            return
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state.is_finished() for t in trials)
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        for t in stale:
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params)
        offset = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        remaining = max(0, int(sweeper.n_trials) - finished)
        log.info(
            "optuna study %s: %d trials finished, %d left unfinished by a killed search (run again), "
            "%d to run; job folders from %d",
            sweeper.study_name,
            finished,
            len(stale),
            remaining,
            offset,
        )
        with read_write(config.hydra), open_dict(config.hydra):
            sweeper.n_trials = remaining
            if sweeper.get("sampler") and sweeper.sampler.get("seed") is not None:
                # a sampler seeded as before would draw the first trials' parameters again
                sweeper.sampler.seed = int(sweeper.sampler.seed) + offset
            config.hydra.overrides.hydra.append(f"hydra.sweep.subdir=${{{JOB_OFFSET_RESOLVER}:{offset}}}")

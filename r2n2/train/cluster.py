"""Running on a SLURM cluster and inside Hydra sweeps: requeue before the time limit, resume a
requeued job, and DDP jobs inside a Hydra multirun.

* :class:`SlurmRequeue` (a Lightning callback, in ``conf/callbacks/default.yaml``): when SLURM sends
  the time-limit signal (``sbatch --signal=USR1@90``), rank 0 requeues the job with ``scontrol
  requeue``. The handler only sets a flag; the requeue runs from the next callback hook, never from
  inside the signal handler (Lightning issue #21406: checkpointing in its handler can hang or write
  a checkpoint mid-step). Nothing is saved at the signal: the requeued job resumes from the last
  epoch-boundary ``last.ckpt``, because only there does the per-epoch seeding make a resumed run
  continue bit for bit (a mid-epoch checkpoint would need the random state and sampler position
  at that step; Lightning's ``hpc_ckpt_*.ckpt`` restarts the epoch's data: issue #2397).
* :func:`requeued_checkpoint`: in a requeued job (``SLURM_RESTART_COUNT`` >= 1) whose run folder
  already holds ``checkpoints/last.ckpt``, that checkpoint. The sbatch template keeps the run
  folder per job id, and submitit keeps a sweep job's folder, so a requeued job finds it again,
  whether it requeued itself or someone ran ``scontrol requeue``.
* :func:`needs_own_run` / :func:`train_in_child_run`: a Hydra multirun job whose trainer starts DDP
  processes itself (``trainer=ddp``, ``ddp_cpu``) runs as a plain ``train.py`` run of its own in the
  job's folder. Lightning's script launcher re-runs ``sys.argv`` in every rank, which inside a
  multirun starts the whole sweep again in each rank.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # conf/callbacks/default.yaml: last_checkpoint
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"  # the repository's entry point


def slurm_job_id() -> str | None:
    """The id ``scontrol`` knows this job by (``<array job>_<task>`` for array jobs), or None."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeued_checkpoint(output_dir: str | Path) -> str | None:
    """``<output_dir>/checkpoints/last.ckpt`` when this process belongs to a SLURM job that was
    requeued (``SLURM_RESTART_COUNT`` >= 1) and that checkpoint exists; otherwise None."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    ckpt = Path(output_dir) / LAST_CHECKPOINT
    if restarts < 1 or not ckpt.is_file():
        return None
    log.info("SLURM job %s restart %d: resuming from %s", slurm_job_id(), restarts, ckpt)
    return str(ckpt)


class SlurmRequeue(L.Callback):
    """Requeue the SLURM job when ``signum`` (default SIGUSR1) arrives; inert outside SLURM.

    Every rank receives the signal (``--signal=USR1@90`` without ``B:``); rank 0 requeues, SLURM
    then stops all ranks and starts the job again with the same id.
    """

    def __init__(self, signum: int | str = "SIGUSR1"):
        self.signum = signal.Signals[signum] if isinstance(signum, str) else signal.Signals(signum)
        self.received = False
        self.requeued = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before Lightning registers its own handlers, so Lightning's auto-requeue (hpc_ckpt saved
        # inside the handler) stays off even where it detects SLURM by itself; kept for the process
        # lifetime, so a signal during testing still requeues
        if slurm_job_id() is not None and signal.getsignal(self.signum) != self._on_signal:
            signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = True  # only a flag: the work happens in the next hook

    def _maybe_requeue(self, trainer: L.Trainer) -> None:
        if not self.received or self.requeued:
            return
        self.requeued = True
        if not trainer.is_global_zero:
            return
        job = slurm_job_id()
        log.info("signal %s: requeueing SLURM job %s; it resumes from %s", self.signum.name, job, LAST_CHECKPOINT)
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_requeue(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe_requeue(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe_requeue(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe_requeue(trainer)


# --- DDP inside a Hydra multirun -------------------------------------------------------------------


def needs_own_run(cfg) -> bool:
    """True for a job of a Hydra multirun whose trainer starts its DDP processes itself (any
    ``ddp*`` strategy) where SLURM does not start them (``trainer=slurm`` under srun/submitit)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    strategy = cfg.trainer.get("strategy", "auto")
    return isinstance(strategy, str) and strategy.startswith("ddp") and not SLURMEnvironment.detect()


def train_in_child_run(metrics_file: str) -> dict:
    """Run this multirun job as ``python train.py <the job's overrides> hydra.run.dir=<job folder>``
    (DDP then starts its ranks as in any single run) and return the metrics it wrote."""
    from hydra.core.hydra_config import HydraConfig

    if not TRAIN_SCRIPT.is_file():
        raise FileNotFoundError(
            f"{TRAIN_SCRIPT}: a DDP job inside a multirun runs train.py again, and it is not "
            "there (r2n2 installed without its repository); sweep with one device per job"
        )
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    # the sweep already saved this job's .hydra/ (its overrides feed the sweep summary)
    cmd = [
        sys.executable,
        str(TRAIN_SCRIPT),
        *hc.overrides.task,
        f'hydra.run.dir="{job_dir}"',
        "hydra.output_subdir=null",
    ]
    log.info("job %s uses DDP: training in a run of its own in %s", hc.job.num, job_dir)
    proc = subprocess.run(cmd, cwd=hc.runtime.cwd)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{job_dir}: the job's DDP run failed with exit status {proc.returncode}; "
            f"its log is {job_dir / (hc.job.name + '.log')}"
        )
    return json.loads((job_dir / metrics_file).read_text())

"""SLURM for real: a one-node cluster (munged, slurmctld, slurmd) started here from a temporary
config, and real jobs on it: the repository's sbatch template running 2-task DDP training, a
submitit_slurm sweep, and a job requeued three times (by its own SIGUSR1 handler and by ``scontrol
requeue`` while it trains, and by ``scontrol requeue`` while it tests) that must end exactly like the
uninterrupted job.

Marked ``slurm``: deselected in the default run (pyproject addopts); ``.ci/run`` runs them with
``python -m pytest -m slurm``. They need root (the daemons) and install slurm-wlm and munge with
apt-get where they are missing; otherwise they skip and say why.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import HELPERS, ROOT, tiny

pytestmark = pytest.mark.slurm

TEMPLATE = ROOT / "conf" / "slurm" / "train.sbatch"
PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ("munged", "slurmctld", "slurmd")
# the 2-task job of tests (a) and (c): 4 epochs (room for two requeues however slow the machine is),
# fp32 (equality with one process to 1e-5)
# enough epochs that the hand-made requeue lands while the restarted job still trains (with 4, a fast
# default model could finish before it landed, and the last restart had nothing left to train)
EPOCHS = 6
DDP_CPU = ["trainer.accelerator=cpu", "trainer.precision=32", "trainer.sync_batchnorm=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_slurm_installed() -> None:
    missing = [
        d
        for d in ("munged", "slurmctld", "slurmd", "sbatch")
        if shutil.which(d) is None and not Path("/usr/sbin", d).exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing) and apt-get as root is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"could not install SLURM ({' '.join(cmd)}: {proc.stderr.strip()[-500:]})")


class LocalSlurm:
    """A one-node SLURM cluster in a temporary folder; commands get ``SLURM_CONF`` through ``env``."""

    def __init__(self, base: Path):
        self.base = base
        self.munge = base / "munge"
        self.conf = base / "slurm.conf"
        self.env = {
            **os.environ,
            "SLURM_CONF": str(self.conf),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
        }
        self.pids: dict[str, int] = {}

    def start(self) -> None:
        munge_user = pwd.getpwnam("munge")
        self.munge.mkdir(mode=0o755)  # munged: the socket folder must be searchable by all
        key = self.munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for p in (self.munge, key):
            os.chown(p, munge_user.pw_uid, munge_user.pw_gid)
        self._run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "/usr/sbin/munged",
                f"--key-file={key}",
                f"--socket={self.munge / 'munge.sock'}",
                f"--pid-file={self.munge / 'munged.pid'}",
                f"--log-file={self.munge / 'munged.log'}",
                f"--seed-file={self.munge / 'munged.seed'}",
            ]
        )
        self.pids["munged"] = self._pid(self.munge / "munged.pid")

        host = socket.gethostname().split(".")[0]
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
        for d in ("state", "spool"):
            (self.base / d).mkdir()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=r2n2test",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge / 'munge.sock'}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={self.base / 'state'}",
                    f"SlurmdSpoolDir={self.base / 'spool'}",
                    f"SlurmctldPidFile={self.base / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.base / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.base / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.base / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "KillWait=5",
                    "MinJobAge=600",
                    f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )
        self._run(["/usr/sbin/slurmctld", "-i"])
        self.pids["slurmctld"] = self._pid(self.base / "slurmctld.pid")
        self._run(["/usr/sbin/slurmd", "-N", host])
        self.pids["slurmd"] = self._pid(self.base / "slurmd.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self._run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node did not come up (state {state!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Cancel our jobs, then stop the daemons this fixture started, by their pid."""
        if self.pids.get("slurmctld"):
            self._run(["scancel", "--user=root"], check=False)
            time.sleep(1)
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.base.glob("*.log")))

    def _pid(self, path: Path) -> int:
        for _ in range(100):
            if path.is_file() and path.read_text().strip():
                return int(path.read_text())
            time.sleep(0.1)
        raise RuntimeError(f"{path} was not written:\n{self.logs()}")

    def _run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        return proc

    # --- jobs ---------------------------------------------------------------------------------

    def sbatch(self, args: list[str], wait: bool = False) -> tuple[int, subprocess.CompletedProcess]:
        cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *args]
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        job = int(proc.stdout.strip().split(";")[0]) if proc.stdout.strip() else -1
        return job, proc

    def job(self, job: int) -> dict:
        out = self._run(["scontrol", "show", "job", "-o", str(job)]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for(self, predicate, what: str, timeout: float = 600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def release(self, job: int) -> None:
        """SLURM holds a requeued job for 2 minutes (BeginTime); start it now."""
        self._run(["scontrol", "update", f"JobId={job}", "StartTime=now"])


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged needs root")
    _ensure_slurm_installed()
    try:
        pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("the munge package did not create its 'munge' user")
    base = Path(tempfile.mkdtemp(prefix="r2n2-slurm-"))
    base.chmod(0o755)  # munged (as user munge) must reach its folder inside
    cluster = LocalSlurm(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _ddp_job_args(data_dir: Path, out: Path) -> list[str]:
    return [
        "--nodes=1",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        f"--output={out}",
        str(TEMPLATE),
        *tiny(data_dir, epochs=EPOCHS),
        *DDP_CPU,
    ]


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else f"({path} missing)"


@pytest.fixture(scope="module")
def uninterrupted(slurm, data_dir, tmp_path_factory) -> tuple[Path, str]:
    """The 2-task DDP job of the sbatch template, run to the end with sbatch --wait."""
    tmp = tmp_path_factory.mktemp("sbatch")
    run_dir, out = tmp / "run", tmp / "slurm.out"
    slurm.env["R2N2_RUN_DIR"] = str(run_dir)
    try:
        job, proc = slurm.sbatch(_ddp_job_args(data_dir, out), wait=True)
    finally:
        del slurm.env["R2N2_RUN_DIR"]
    assert proc.returncode == 0, f"{proc.stderr}\n{_read(out)[-6000:]}"
    return run_dir, _read(out)


def _one_process(run_dir: Path, ckpt: str, stage: str) -> float:
    """IoU@0.3 of a checkpoint evaluated by one process on the run's own data."""
    import hydra
    import lightning as L
    from omegaconf import OmegaConf

    from r2n2.train.module import ReconstructionModule

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = hydra.utils.instantiate(cfg.data)
    state = torch.load(run_dir / "checkpoints" / ckpt, weights_only=True, map_location="cpu")
    module = ReconstructionModule(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=32,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    result = (trainer.validate if stage == "val" else trainer.test)(module, datamodule=datamodule, verbose=False)
    return result[0][f"{stage}/iou"]


def test_sbatch_template_runs_two_ddp_ranks_with_the_metrics_of_one_process(uninterrupted):
    """(a) sbatch --wait of conf/slurm/train.sbatch, 2 tasks: Lightning's SLURMEnvironment gives
    ranks 0 and 1; one run folder; rank 0 alone writes metrics, checkpoints and TensorBoard; val
    and test IoU equal one process evaluating the same checkpoints (odd-sized splits, no padding)."""
    run_dir, out = uninterrupted
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in out and "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "fit.json", "last.ckpt"]
    # every TensorBoard file comes from one process (the pid is part of the file name)
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[4] for p in events}) == 1
    # rank 1 logs beside rank 0 and leaves the run's config to it
    assert (run_dir / "train.log").is_file() and (run_dir / "train_rank1.log").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    assert metrics["val/iou"] == pytest.approx(_one_process(run_dir, "last.ckpt", "val"), abs=1e-5)
    assert metrics["test/iou"] == pytest.approx(_one_process(run_dir, "best.ckpt", "test"), abs=1e-5)


def test_requeued_job_resumes_in_its_folder_and_ends_like_the_uninterrupted_one(
    slurm, uninterrupted, data_dir, tmp_path
):
    """(c) The same job, interrupted three times: first SIGUSR1 as SLURM sends it before the time
    limit (``--signal=USR1@90``; here ``scancel --signal=USR1``), on which the job requeues itself;
    then ``scontrol requeue`` by hand while it trains; then again while it tests, after its last
    checkpoint. Each time the job starts again with the same id in the same folder and resumes from
    last.ckpt (the last time only to test it); it ends with the uninterrupted job's weights and metrics."""
    from r2n2.train.run import TIMING_KEYS

    straight_dir, _ = uninterrupted
    run_dir, out = tmp_path / "run", tmp_path / "slurm.out"
    last, holding = run_dir / "checkpoints" / "last.ckpt", tmp_path / "holding"
    hold = [
        "+callbacks.hold._target_=hold.HoldAtTest",
        f"+callbacks.hold.marker={holding}",
        "+callbacks.hold.restart=2",
    ]
    slurm.env["R2N2_RUN_DIR"] = str(run_dir)
    try:
        job, proc = slurm.sbatch(_ddp_job_args(data_dir, out) + hold)
    finally:
        del slurm.env["R2N2_RUN_DIR"]
    assert proc.returncode == 0, proc.stderr

    def requeued(n: int):
        info = slurm.job(job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"):
            raise AssertionError(f"job ended ({info.get('JobState')}) before restart {n}:\n{_read(out)[-6000:]}")
        return int(info.get("Restarts", 0)) >= n and info.get("JobState") == "PENDING"

    # 1. after the first epoch's checkpoint: the time-limit signal, to every task of the job step
    slurm.wait_for(last.is_file, "the first last.ckpt")
    slurm._run(["scancel", "--signal=USR1", str(job)])
    slurm.wait_for(lambda: requeued(1), "the job to requeue itself")
    slurm.release(job)
    # 2. once the restarted job has saved an epoch of its own: requeue by hand (the first run may have
    # saved another epoch before SLURM stopped it, so the clock starts when the restart runs)
    slurm.wait_for(lambda: slurm.job(job).get("JobState") == "RUNNING", "the restarted job to run")
    restart_save = last.stat().st_mtime_ns
    slurm.wait_for(lambda: last.stat().st_mtime_ns != restart_save, "a checkpoint of the restarted job")
    slurm._run(["scontrol", "requeue", str(job)])
    slurm.wait_for(lambda: requeued(2), "the requeue by scontrol")
    slurm.release(job)
    # 3. after the last checkpoint, while the job tests (held there by tests/helpers/hold.py)
    slurm.wait_for(holding.is_file, "the restarted job to reach its test")
    assert not (run_dir / "metrics.json").exists()
    slurm._run(["scontrol", "requeue", str(job)])
    slurm.wait_for(lambda: requeued(3), "the requeue during the test")
    slurm.release(job)
    slurm.wait_for(lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED"), "the job to end")

    log = _read(out)
    assert slurm.job(job)["JobState"] == "COMPLETED", log[-6000:]
    assert "signal SIGUSR1: requeueing SLURM job" in log
    for n in (1, 2, 3):
        assert f"job {job} (restart {n})" in log and f"SLURM job {job} restart {n}: resuming from" in log
    assert "training had finished; testing the best checkpoint" in log
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    ma, mb = (
        {k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if k not in TIMING_KEYS}
        for d in (straight_dir, run_dir)
    )
    for key in ("train/loss", "train/iou", "val/loss", "val/iou", "test/loss", "test/iou"):
        assert key in mb, key  # the last restart trained nothing: its train/val figures come from fit.json
    assert ma == mb


def test_submitit_slurm_sweep_runs_jobs_on_the_cluster_and_writes_the_summary(slurm, data_dir, tmp_path):
    """(b) python train.py -m hydra/launcher=submitit_slurm: 2 jobs submitted to SLURM (an array
    job), each in its own folder; the launching process writes summary.csv/summary.md at the
    sweep root. Default precision (bf16-mixed)."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=20",
        "optimizer.lr=1e-3,3e-4",
        *tiny(data_dir, epochs=1),
        "logger=none",
        "test=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm.env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(_read(p)[-3000:] for p in sweep.glob(".submitit/*/*.out"))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    # submitit's own folder: one SLURM job id (the array), a log per task
    assert (
        len(list(sweep.glob(".submitit/*_0/*_log.out"))) == 1 and len(list(sweep.glob(".submitit/*_1/*_log.out"))) == 1
    )
    md, csv_text = (sweep / "summary.md").read_text(), (sweep / "summary.csv").read_text()
    for job, lr in zip(jobs, ("optimizer.lr=0.001", "optimizer.lr=0.0003")):
        metrics = json.loads((job / "metrics.json").read_text())
        assert f"{job.name},{lr},ok," in csv_text
        assert f"| {job.name} | {lr} | ok | {metrics['val/iou_best']:.4f} | {metrics['val/iou']:.4f} |" in md

"""Cluster configs and sweeps that run without SLURM: trainer=slurm, the submitit launchers and the
optuna search compose as documented; DDP jobs inside a Hydra multirun run (each in its own
folder) instead of hanging; a killed optuna search continues when the same command runs again.
The SLURM jobs themselves are in tests/test_slurm.py (marker slurm)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import ROOT, run_train, tiny

CONF = ROOT / "conf"
TEMPLATE = CONF / "slurm" / "train.sbatch"
# one training and one validation batch per job: the sweep machinery is under test, not learning
SHORT = [
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "logger=none",
    "test=false",
    "extras.print_config=false",
    "module.viz_every_n_epochs=0",
]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides, return_hydra_config=True)


def test_trainer_slurm_takes_nodes_and_gpus_from_the_allocation(monkeypatch):
    import hydra
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    trainer = _compose(["trainer=slurm"]).trainer
    assert (trainer.devices, trainer.num_nodes, trainer.strategy, trainer.accelerator) == (4, 2, "ddp", "gpu")
    assert trainer.sync_batchnorm and trainer.use_distributed_sampler is False  # our unpadded samplers
    (env,) = [hydra.utils.instantiate(p) for p in trainer.plugins]
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False  # r2n2.train.cluster.SlurmRequeue does it
    assert _compose(["trainer=slurm", "trainer.num_nodes=8"]).trainer.num_nodes == 8
    callbacks = _compose([]).callbacks
    assert (
        callbacks.slurm_requeue._target_ == "r2n2.train.cluster.SlurmRequeue"
        and callbacks.slurm_requeue.signum == "SIGUSR1"
    )


# train.py silences this on purpose: our files share the plugin's config names to be merged over its schema
@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore")
def test_submitit_launchers_and_optuna_search_compose():
    cfg = _compose(["hydra/launcher=submitit_slurm"])
    slurm = cfg.hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.max_num_timeout > 0 and slurm.signal_delay_s > 0
    # ours over the plugin's schema: our values, its fields we leave alone
    assert slurm.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j" and slurm.array_parallelism == 256
    local = _compose(["hydra/launcher=submitit_local"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.gpus_per_node == 0

    cfg = _compose(["hparams_search=optuna", "hydra.sweep.dir=/scratch/search"])
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.mode.name == "MULTIRUN" and sweeper.direction == "maximize"
    assert sweeper.storage == "sqlite:////scratch/search/optuna.db"  # the study lives in the sweep folder
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "model.hidden_size", "data.batch_size"}
    assert cfg.hydra.callbacks.optuna_resume._target_ == "r2n2.train.sweep.ResumeOptunaStudy"
    # without a sweep dir given, a stable folder per study (no timestamp), so a rerun finds it
    assert _compose(["hparams_search=optuna"]).hydra.sweep.dir == "multirun/train/optuna-r2n2"


def test_sbatch_template_is_valid_bash_and_asks_for_the_requeue_signal():
    assert subprocess.run(["bash", "-n", str(TEMPLATE)]).returncode == 0
    options = [line.split(None, 1)[1] for line in TEMPLATE.read_text().splitlines() if line.startswith("#SBATCH")]
    for option in ("--signal=USR1@90", "--requeue", "--open-mode=append", "--ntasks-per-node=1"):
        assert option in options, option
    assert "trainer=slurm" in TEMPLATE.read_text() and "srun" in TEMPLATE.read_text()


def test_requeued_checkpoint_only_in_a_restarted_job_with_a_checkpoint(tmp_path, monkeypatch):
    from r2n2.train.cluster import requeued_checkpoint

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeued_checkpoint(tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(tmp_path) is None  # restarted before its first checkpoint: starts over
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert requeued_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert requeued_checkpoint(tmp_path) is None


@pytest.mark.slow
def test_ddp_jobs_in_a_multirun_run_each_in_their_own_folder(data_dir, tmp_path):
    """trainer=ddp_cpu (2 gloo processes) in a 2-job sweep: each job trains with its own 2 ranks as a
    run of its own in its folder; the sweep ends (a hang fails on the timeout) with both jobs' metrics."""
    sweep = tmp_path / "sweep"
    proc = run_train(
        [
            "-m",
            "trainer=ddp_cpu",
            "optimizer.lr=1e-3,3e-4",
            *tiny(data_dir, epochs=1),
            *SHORT,
            f"hydra.sweep.dir={sweep}",
        ]
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0 <= metrics["val/iou"] <= 1 and (job / "checkpoints" / "last.ckpt").is_file()
        assert metrics["val/iou_best"] == metrics["val/iou"] and metrics["epochs"] == 1  # rank 0's full record
    out = proc.stdout + proc.stderr
    assert out.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2 and out.count("uses DDP: training in a run of its own") == 2
    assert (sweep / "summary.csv").read_text().count(",ok,") == 2


@pytest.mark.slow
def test_killed_optuna_search_continues_when_run_again(data_dir, tmp_path):
    """hparams_search=optuna with 3 trials, the process SIGKILLed as trial 1 starts training; the
    same command again finishes the study: trial 1 retried with its parameters, 3 trials complete
    in all, job folders numbered by trial, the summary lists every trial and the best one."""
    import optuna

    sweep, marker = tmp_path / "search", tmp_path / "killed"
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={sweep}",
        *tiny(data_dir, epochs=1),
        *SHORT,
        "+callbacks.kill._target_=kill_job.KillJobOnce",
        "+callbacks.kill.job=1",
        f"+callbacks.kill.marker={marker}",
    ]
    killed = run_train(args, check=False)
    assert killed.returncode != 0 and marker.exists()
    storage = f"sqlite:///{sweep}/optuna.db"
    states = [t.state.name for t in optuna.load_study(study_name="r2n2", storage=storage).trials]
    assert states == ["COMPLETE", "RUNNING"]

    run_train(args)
    trials = optuna.load_study(study_name="r2n2", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params  # the killed trial, run again
    assert trials[3].params != trials[0].params  # the reseeded sampler does not repeat the first draw
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    for t in (trials[0], trials[2], trials[3]):
        metrics = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        assert metrics["val/iou_best"] == pytest.approx(t.value)
    rows = (sweep / "summary.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2] for r in rows] == ["ok", "failed", "ok", "ok"]
    best = max((trials[0], trials[2], trials[3]), key=lambda t: t.value)
    assert f"Best val/iou_best: job {best.number} ({best.value:.4f})" in (sweep / "summary.md").read_text()

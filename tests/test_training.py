"""The main job end to end, as users run it: ``python train.py`` in real processes on tiny
synthetic data (3 categories x 4 objects x 3 views), checkpoints, resume, TensorBoard, sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_train, tiny

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_run_writes_checkpoints_and_metrics(trained):
    run_dir, proc = trained
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "train/loss",
        "train/iou",
        "val/loss",
        "val/iou",
        "test/loss",
        "test/iou",
        "parameters",
        "wall_seconds",
        "train_samples_per_second",
        "baseline/global_mean_shape_test_iou",
    ):
        assert key in m, key
    assert 0 <= m["test/iou"] <= 1 and m["train_samples_per_second"] > 0 and m["epochs"] == 2
    # one throughput figure per epoch, each logged to train.log (a slower second epoch shows)
    assert len(m["train_samples_per_second_by_epoch"]) == 2 and min(m["train_samples_per_second_by_epoch"]) > 0
    assert len(m["epoch_seconds_by_epoch"]) == 2 and min(m["epoch_seconds_by_epoch"]) > 0
    log = (run_dir / "train.log").read_text()
    assert "epoch 0: " in log and "epoch 1: " in log and "training samples/s" in log and "s in all" in log
    # the parameter count printed at start is the model's
    from omegaconf import OmegaConf

    from r2n2.models import SeedModel, count_parameters

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    net = SeedModel(
        **{
            k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
            for k, v in cfg.model.items()
            if k != "_target_"
        }
    )
    assert m["parameters"] == count_parameters(net)
    assert f"{count_parameters(net):,} parameters" in proc.stdout
    # the test IoU is printed next to the mean-shape baseline
    assert (
        f"test IoU@0.3 {m['test/iou']:.4f} | global mean-shape baseline "
        f"{m['baseline/global_mean_shape_test_iou']:.4f}" in proc.stdout
    )


def test_checkpoint_loads_with_weights_only(trained):
    run_dir, _ = trained
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    hp = ckpt["hyper_parameters"]
    assert hp["net"]["_target_"] == "r2n2.models.SeedModel" and isinstance(hp["optimizer"], dict)
    assert "optimizer_states" in ckpt and "lr_schedulers" in ckpt and ckpt["epoch"] == 1
    from r2n2.train.module import ReconstructionModule

    module = ReconstructionModule(**hp)
    module.load_state_dict(ckpt["state_dict"])


def test_tensorboard_has_scalars_images_figure_and_hparams(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = trained
    tags = {"scalars": set(), "images": set(), "hparams": False}
    for f in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        ea.Reload()
        tags["scalars"] |= set(ea.Tags()["scalars"])
        tags["images"] |= set(ea.Tags()["images"])
        try:
            tags["hparams"] |= bool(ea.PluginTagToContent("hparams"))
        except KeyError:
            pass
    expected = {
        "train/loss_step",
        "train/iou",
        "val/loss",
        "val/iou",
        "val/iou@0.2",
        "val/iou@0.3",
        "val/iou@0.4",
        "val/iou@0.5",
        "test/loss",
        "test/iou",
        "lr-Adam",
    }
    assert expected <= tags["scalars"], expected - tags["scalars"]
    assert {"val/reconstructions", "val/inputs"} <= tags["images"]
    assert tags["hparams"]


@pytest.mark.slow
def test_resume_after_a_crash_equals_an_uninterrupted_run(data_dir, trained, tmp_path):
    """Kill a run (SIGKILL) as its second epoch starts, resume it from its folder: same final
    weights and metrics as the uninterrupted 2-epoch run."""
    straight_dir, _ = trained
    crashed = tmp_path / "crashed"
    proc = run_train(tiny(data_dir) + ["+callbacks.crash._target_=crash.CrashAtEpoch"], crashed, check=False)
    assert proc.returncode != 0 and not (crashed / "metrics.json").exists()
    first = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0

    run_train(tiny(data_dir) + [f"resume={crashed}"], tmp_path / "resumed-hydra")
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    ma = json.loads((straight_dir / "metrics.json").read_text())
    mb = json.loads((crashed / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "val/iou", "test/loss", "test/iou"):
        assert ma[key] == mb[key], key
    # the run's own train.log goes on (not only the new Hydra folder's) and ends with the resumed headline
    own_log = (crashed / "train.log").read_text()
    assert f"resuming {crashed}" in own_log
    assert own_log.strip().splitlines()[-1].split(" - ", 1)[1].startswith(f"test IoU@0.3 {mb['test/iou']:.4f}")


@pytest.mark.slow
def test_sweep_runs_each_job_in_its_folder_and_writes_a_summary(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "optimizer.lr=1e-3,3e-4",
        *tiny(data_dir, epochs=1),
        "logger=none",
        "test=false",
        f"hydra.sweep.dir={sweep}",
    ]
    run_train(args)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    assert all((p / "metrics.json").is_file() and (p / "checkpoints" / "last.ckpt").is_file() for p in jobs)
    csv_text = (sweep / "summary.csv").read_text()
    md = (sweep / "summary.md").read_text()
    for job, lr in zip(jobs, ("optimizer.lr=0.001", "optimizer.lr=0.0003")):  # Hydra normalises the values
        assert f"{job.name},{lr}," in csv_text and f"| {job.name} | {lr} |" in md
    for p in jobs:
        metrics = json.loads((p / "metrics.json").read_text())
        assert f"{metrics['val/iou']:.4f}" in md
        # test=false: nothing is scored on the test split, the baselines included (they cost minutes on a
        # large training set)
        assert not any(k.startswith(("test/", "baseline/")) for k in metrics), sorted(metrics)


@pytest.mark.slow
def test_ddp_ranks_exit_cleanly_after_closing_the_gloo_group(tmp_path):
    """Two real gloo processes, 15 times, each running two jobs in one process as a multirun does:
    after the collectives of a run's end, r2n2.train.distributed.close_process_group lets rank 1 start the
    second job's group while rank 0 still works on the first (``wait_for_all``), and both exit with
    status 0. Without closing, 7 of 30 such pairs aborted at exit (exit 134, "terminate called without
    an active exception"; a SLURM CI job failed on it): 15 clean pairs by chance about 2% of the time."""
    import socket
    import subprocess
    import sys

    helper = Path(__file__).resolve().parent / "helpers" / "gloo_exit.py"
    for attempt in range(15):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        procs = [
            subprocess.Popen(
                [sys.executable, str(helper), str(rank), port], stderr=subprocess.PIPE, text=True, cwd=tmp_path
            )
            for rank in (0, 1)
        ]
        results = []
        for p in procs:
            try:
                err = p.communicate(timeout=120)[1]
            except subprocess.TimeoutExpired:  # a rank stuck at the next job's rendezvous
                p.kill()
                err = p.communicate()[1] + "\n(killed after 120 s)"
            results.append((p.returncode, err))
        assert [rc for rc, _ in results] == [0, 0], (attempt, [err[-2000:] for _, err in results])


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_the_iou_one_process_computes(data_dir, tmp_path):
    """trainer=ddp_cpu: 2 gloo processes (Lightning's ddp launcher, as trainer=ddp on GPUs). The val
    IoU they log equals the IoU one process computes with the final weights on the same validation
    data (odd-sized: 9 samples), and the test predictions' statistics (gathered from both shards)
    equal one process's; the run's record (epochs, best val IoU, throughput) is complete."""
    import hydra
    from omegaconf import OmegaConf

    from r2n2.data.transforms import to_images
    from r2n2.evaluation.metrics import VoxelIoU
    from r2n2.evaluation.spread import PredictionSpread
    from r2n2.train.module import ReconstructionModule

    run_dir = tmp_path / "ddp"
    run_train(
        tiny(data_dir, epochs=1)
        + [
            "trainer=ddp_cpu",
            "trainer.precision=32",
            "logger=none",
            "model.encoder.norm=batch",
            "module.viz_every_n_epochs=0",
        ],
        run_dir,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = metrics["val/iou"]
    assert metrics["epochs"] == 1 and metrics["val/iou_best"] == logged and metrics["train_samples_per_second"] > 0

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    assert len(dm.datasets["val"]) % 2 == 1  # the two processes get 5 and 4 samples, no padding
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    module = ReconstructionModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    iou = VoxelIoU(0.3)
    spread = PredictionSpread()
    spread.reset(total=len(dm.datasets["test"]))  # as on_test_start does
    with torch.no_grad():
        for batch in dm.val_dataloader():
            iou.update(torch.sigmoid(module(to_images(batch["rgba"]))), batch["voxels"])
        for batch in dm.test_dataloader():
            spread.update(torch.sigmoid(module(to_images(batch["rgba"])).float()))
    assert logged == pytest.approx(float(iou.compute()["iou@0.3"]), abs=1e-5)
    assert len(dm.datasets["test"]) % 2 == 1  # unequal shards
    one = spread.compute()
    assert set(one) == {k for k in metrics if k.startswith("test/pred_")}
    for key, value in one.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_scheduler_milestones_count_epochs_or_steps(interval, data_dir, tmp_path):
    """scheduler.interval=step makes milestones count optimiser steps (3D-R2N2's iterations)."""
    from hydra import compose, initialize_config_dir

    from r2n2.train.run import build

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            [
                *tiny(data_dir, epochs=1),
                "logger=none",
                "callbacks.model_checkpoint=null",
                "callbacks.last_checkpoint=null",
                "trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                "optimizer.lr=0.01",
                "scheduler=multistep",
                "scheduler.milestones=[2]",
                "scheduler.gamma=0.1",
                f"scheduler.interval={interval}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    datamodule, module, trainer, _ = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step >= 2
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.001 if interval == "step" else 0.01)


def test_run_spread_schedule_needs_a_bounded_run(tmp_path):
    """scheduler=cosine (the default) spreads over the run's optimiser steps: an unbounded run
    (trainer.max_epochs=-1 with trainer.max_steps=-1) gets an error naming those keys, not int(inf)."""
    from hydra import compose, initialize_config_dir

    from r2n2.train.run import build

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "config", ["trainer.max_epochs=-1", "trainer.max_steps=-1", "logger=none", f"paths.output_dir={tmp_path}"]
        )
    _, module, trainer, _ = build(cfg)
    module.trainer = trainer
    with pytest.raises(ValueError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=-1"):
        module.configure_optimizers()


def test_finished_checkpoint_beside_another_fits_record_is_refused_saying_so(data_dir, trained, tmp_path):
    """ckpt_path= a finished checkpoint whose fit.json was written by another fit (another global
    step): nothing to train and no figures of its own; the error says the record is of another fit
    (it used to say the record was missing although the file is there)."""
    run_dir, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", copy / "last.ckpt")
    record = json.loads((run_dir / "checkpoints" / "fit.json").read_text())
    record["global_step"] += 1
    (copy / "fit.json").write_text(json.dumps(record))
    proc = run_train(tiny(data_dir) + ["logger=none", f"ckpt_path={copy / 'last.ckpt'}"], tmp_path / "out", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"train.py: error: {copy / 'last.ckpt'}: "), proc.stderr[-2000:]
    assert f"{copy / 'fit.json'} (its train/val figures) was written at the end of another fit" in last

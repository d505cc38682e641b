"""Exact resume whatever the data settings: a real ``python train.py`` run is killed with SIGKILL
after its first checkpoint and continued with ``resume=<run dir>``; its final weights and metrics
equal those of an uninterrupted run with the same command.

Two settings: the defaults (2 worker processes, persistent), where the resumed loader used to replay
epoch 0's order, and augmentation with a random 1..3 views per batch, whose random draws used to
live in the (never reseeded) persistent workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HELPERS, ROOT, run_train, tiny

from r2n2.train.run import TIMING_KEYS

EPOCHS = 2


def _args(data_dir: Path, extra: list[str]) -> list[str]:
    return tiny(data_dir, epochs=EPOCHS) + [
        "data.num_workers=2",
        "data.persistent_workers=true",
        "logger=none",
        "test=false",
        "module.viz_every_n_epochs=0",
        *extra,
    ]


def _killed_after_first_checkpoint(args: list[str], run_dir: Path) -> int:
    """Start train.py, SIGKILL it as soon as checkpoints/last.ckpt exists; return that checkpoint's epoch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its worker processes, all at once
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"train.py ended before the kill ({proc.returncode}):\n{err[-3000:]}"
    assert not (run_dir / "metrics.json").exists()
    return torch.load(last, weights_only=True)["epoch"]


def _results(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}, state


def _check_resume_is_exact(data_dir: Path, tmp_path: Path, extra: list[str], move: bool = False) -> None:
    """An uninterrupted run and a killed one resumed (``move``: after renaming its folder) end alike."""
    args = _args(data_dir, extra)
    run_train(args, tmp_path / "whole")
    epoch = _killed_after_first_checkpoint(args, tmp_path / "killed")
    assert epoch < EPOCHS - 1, "the kill came after the last epoch: nothing left to resume"
    run = (tmp_path / "killed").rename(tmp_path / "moved") if move else tmp_path / "killed"
    proc = run_train(args + [f"resume={run}"], tmp_path / "resume-hydra")
    assert "dirpath has changed" not in proc.stdout + proc.stderr  # Lightning's warning that it forgot the best score
    (want_metrics, want_state), (got_metrics, got_state) = _results(tmp_path / "whole"), _results(run)
    assert got_metrics == want_metrics
    for want, got in ((want_state, got_state), _best_states(tmp_path / "whole", run)):
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def _best_states(*runs: Path) -> list[dict]:
    return [torch.load(r / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"] for r in runs]


def test_resume_is_exact_with_the_default_data_settings(data_dir, tmp_path):
    """2 persistent worker processes (the default): the resumed epoch gets its own order, not epoch 0's."""
    _check_resume_is_exact(data_dir, tmp_path, [])


@pytest.mark.slow
def test_resume_of_a_moved_run_folder_keeps_its_best_checkpoint(data_dir, tmp_path):
    """A run folder renamed (or copied to other storage) before resume=: Lightning would forget the
    best val IoU and let the first resumed epoch overwrite best.ckpt (r2n2.train.callbacks.RunCheckpoint)."""
    _check_resume_is_exact(data_dir, tmp_path, [], move=True)


@pytest.mark.slow
def test_resume_is_exact_with_augmentation_and_random_view_counts(data_dir, tmp_path):
    _check_resume_is_exact(data_dir, tmp_path, ["data.augment=true", "data.views_per_sample=[1,3]"])


@pytest.mark.slow
def test_resume_with_more_epochs_respreads_the_default_cosine_schedule(data_dir, tmp_path):
    """The default schedule (scheduler=cosine) spans the run's optimiser steps. A finished 1-epoch run
    resumed with trainer.max_epochs=2 used to stop at the old last step ("Tried to step N times"): its
    checkpoint held the 1-epoch length. Now it trains epoch 2 on a schedule spread over 2 epochs and
    ends at the learning rate a 2-epoch run ends at."""
    import hydra
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    args = tiny(data_dir, epochs=1) + ["logger=none", "test=false", "module.viz_every_n_epochs=0"]
    run_train(args, run)
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]
    steps = first["last_epoch"]
    assert first["total_steps"] == steps  # one epoch's steps, all taken
    run_train([f"resume={run}", "trainer.max_epochs=2"], tmp_path / "resume-hydra")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    sched = ckpt["lr_schedulers"][0]
    assert ckpt["epoch"] == 1 and sched["total_steps"] == 2 * steps and sched["last_epoch"] == 2 * steps
    cfg = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=True)["scheduler"]
    assert cfg.pop("total_steps") == "auto" and cfg.pop("interval") == "step"  # the default is step-spread
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg["max_lr"])
    ref = hydra.utils.instantiate(cfg)(optimizer=opt, total_steps=2 * steps)
    for _ in range(2 * steps):
        opt.step()
        ref.step()
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)


@pytest.mark.slow
def test_run_stopped_while_testing_ends_with_the_uninterrupted_metrics(trained, tmp_path):
    """A run stopped after its last checkpoint but before metrics.json (killed or requeued during the
    final test; tests/test_faults.py kills one there for real) has nothing left to train. resume=
    tests its best checkpoint, with the default loader settings, and writes the uninterrupted run's
    metrics.json: the train/val figures come from checkpoints/fit.json. Without that record it is
    refused, naming the file, and nothing in the run changes."""
    import shutil

    straight, _ = trained
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "metrics.json").unlink()
    weights = (run / "checkpoints" / "last.ckpt").read_bytes()
    proc = run_train([f"resume={run}", "data.num_workers=2", "data.persistent_workers=true"], tmp_path / "resumed")
    assert "training had finished; testing the best checkpoint" in proc.stdout + proc.stderr
    assert _results(run)[0] == _results(straight)[0]
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == weights  # nothing trained

    (run / "metrics.json").unlink()
    (run / "checkpoints" / "fit.json").unlink()
    proc = run_train([f"resume={run}"], tmp_path / "refused", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        last.startswith(f"train.py: error: {run / 'checkpoints' / 'last.ckpt'}: training had finished")
        and str(run / "checkpoints" / "fit.json") in last
    ), last
    assert not (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").read_bytes() == weights

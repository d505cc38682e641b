"""What a user saved before ``r2n2/`` was grouped by concept (``train/``, ``evaluation/``, ``utils/``,
``vis/``) still works after it: a run folder resumes, its checkpoint evaluates, an exported weights
file predicts. The files come from the code before the move (commit ``BEFORE``, taken from git) where
the clone has that history; ``tests/fixtures/config-before-regroup.yaml`` (written from that commit
by ``tests/fixtures/before_regroup.py``) lists the old targets a run folder names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_train, tiny
from fixtures.before_regroup import BEFORE
from fixtures.before_regroup import targets as _targets
from hydra.utils import get_object
from omegaconf import OmegaConf

from r2n2.train.resume import MOVED_MODULES, moved_targets

FIXTURE = ROOT / "tests" / "fixtures" / "config-before-regroup.yaml"
BIN = Path(sys.executable).parent


def test_every_target_a_saved_run_folder_names_resolves_after_the_move():
    old = yaml.safe_load(FIXTURE.read_text())["targets"]
    assert old and all(t.rpartition(".")[0] in MOVED_MODULES for t in old)
    cfg = moved_targets(
        OmegaConf.create(
            {
                "callbacks": {f"c{i}": {"_target_": t} for i, t in enumerate(old)},
                "x": {"y": ["${callbacks}", {"_target_": old[0]}]},
            }
        )
    )
    new = _targets(OmegaConf.to_container(cfg, resolve=False), set())
    assert new.isdisjoint(old)
    for target in new:
        assert callable(get_object(target)), target
    assert OmegaConf.to_container(cfg, resolve=False)["x"]["y"][0] == "${callbacks}"  # kept as written


def test_checkpoints_name_no_module_that_moved(trained):
    """A checkpoint stores tensors and plain values, and its hyper-parameters name only ``r2n2.data``
    and ``r2n2.models`` targets (which did not move), so one written before the move loads after it:
    no pickled object of ours (``torch.load(weights_only=True)`` would refuse it) and no moved target."""
    import pickletools
    import zipfile

    ckpt = trained[0] / "checkpoints" / "best.ckpt"
    hparams = torch.load(ckpt, weights_only=True, map_location="cpu")["hyper_parameters"]
    named = _targets(hparams, set())
    assert named and all(t.startswith(("r2n2.data.", "r2n2.models.", "torch.")) for t in named), named
    with zipfile.ZipFile(ckpt) as z:
        pickle = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    globals_ = [arg for op, arg, _ in pickletools.genops(pickle) if op.name in ("GLOBAL", "STACK_GLOBAL")]
    assert not [g for g in globals_ if g and str(g).startswith("r2n2")], globals_


def _old_code(into: Path) -> Path | None:
    """The package, configs and train.py as they were at ``BEFORE``; None without that history."""
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "train.py", "conf", "r2n2"], capture_output=True)
    if proc.returncode != 0:
        return None
    tarfile.open(fileobj=BytesIO(proc.stdout)).extractall(into)
    return into


@pytest.mark.slow
def test_run_folder_checkpoint_and_weights_from_before_the_move_resume_evaluate_and_predict(
    data_dir, shared_data, tmp_path
):
    run, weights = tmp_path / "run", tmp_path / "model.pt"
    photos = [str(shared_data / "photos" / f"{i}.png") for i in range(3)]
    old = _old_code(tmp_path / "old")
    args = tiny(data_dir, epochs=1) + ["logger=none", "test=false"]
    if old is not None:  # written by the old code itself
        env = {**os.environ, "PYTHONPATH": str(old)}
        subprocess.run(
            [sys.executable, "train.py", *args, f"hydra.run.dir={run}"],
            cwd=old,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        for cmd in (
            [
                "r2n2.cli.export",
                "--ckpt",
                str(run / "checkpoints" / "last.ckpt"),
                "--format",
                "weights",
                "--out",
                str(weights),
            ],
            ["r2n2.cli.predict", "--ckpt", str(weights), *photos, "--out", str(tmp_path / "old-pred")],
        ):
            subprocess.run([sys.executable, "-m", *cmd], cwd=old, env=env, check=True, capture_output=True, timeout=600)
    else:  # a shallow clone: the same files from today's code, the run folder naming the old targets
        print(f"commit {BEFORE} not in this clone: the run folder's targets are rewritten to the old paths")
        run_train(args, run)
        config = run / ".hydra" / "config.yaml"
        OmegaConf.save(moved_targets(OmegaConf.load(config), {new: old for old, new in MOVED_MODULES.items()}), config)
        subprocess.run(
            [
                str(BIN / "r2n2-export"),
                "--ckpt",
                str(run / "checkpoints" / "last.ckpt"),
                "--format",
                "weights",
                "--out",
                str(weights),
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    saved = _targets(OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml")), set())
    named = {t for t in saved if t.rpartition(".")[0] in MOVED_MODULES}
    assert named and named <= set(yaml.safe_load(FIXTURE.read_text())["targets"])

    run_train([f"resume={run}", "trainer.max_epochs=2"], tmp_path / "resume-hydra")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1

    proc = subprocess.run(
        [
            str(BIN / "r2n2-eval"),
            f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
            "fscore.points=512",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())

    proc = subprocess.run(
        [str(BIN / "r2n2-predict"), "--ckpt", str(weights), *photos, "--out", str(tmp_path / "pred")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "pred" / "prediction.npy")
    if old is not None:  # the same prediction as the code that wrote the file
        np.testing.assert_array_equal(got, np.load(tmp_path / "old-pred" / "prediction.npy"))

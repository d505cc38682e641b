"""Bad input through ``python train.py`` as users run it: one line ``train.py: error: <path>: <what>``,
exit status 2, no traceback; ``HYDRA_FULL_ERROR=1`` still shows the traceback."""

from __future__ import annotations

import pytest
from conftest import manifest_args, run_train, write_manifest

PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # a PNG signature and the start of its header chunk, then garbage


def _missing_root(tmp_path):
    return ["data=shapenet", f"data.source.root={tmp_path / 'nowhere'}"], str(tmp_path / "nowhere"), "data.source.root"


def _corrupt_png(tmp_path):
    csv = write_manifest(tmp_path / "data", objects=3, views=2)
    (csv.parent / "obj1_0.png").write_bytes(PNG_START + b" torn here")
    # the default loader and packing settings (worker processes), as users run it
    return ["data=manifest", f"data.source.path={csv}"], str(csv.parent / "obj1_0.png"), "corrupt or truncated"


def _resume_missing_folder(tmp_path):
    return [f"resume={tmp_path / 'no-such-run'}"], str(tmp_path / "no-such-run"), "does not exist"


def _resume_without_checkpoints(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    return [f"resume={tmp_path / 'run'}"], str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "not found"


def _garbage_checkpoint(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # a zip signature, then noise
    return [f"ckpt_path={tmp_path / 'garbage.ckpt'}"], str(tmp_path / "garbage.ckpt"), "checkpoint"


CASES = {
    f.__name__.strip("_"): f
    for f in (_missing_root, _corrupt_png, _resume_missing_folder, _resume_without_checkpoints, _garbage_checkpoint)
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_ends_in_one_clean_line(case, tmp_path):
    args, path, what = CASES[case](tmp_path)
    proc = run_train([f"paths.data_dir={tmp_path / 'cache-root'}", "logger=none", *args], tmp_path / "out", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {path}") and what in last, last  # the path, or a file in it
    assert "weights_only" not in last  # never PyTorch's advice to load an untrusted file unsafely


def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    proc = run_train(
        [f"resume={tmp_path / 'no-such-run'}"], tmp_path / "out", check=False, env={"HYDRA_FULL_ERROR": "1"}
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "ResumeError" in proc.stderr
    assert "train.py: error:" not in proc.stderr


@pytest.mark.slow
def test_resume_restores_the_runs_config_and_refuses_to_change_its_data(tmp_path):
    """A 1-epoch run on a manifest (not the default synthetic data); ``resume=<run> trainer.max_epochs=2``
    alone continues on that manifest; an override of the data is refused and the results stay."""
    import json

    import torch

    csv = write_manifest(tmp_path / "data", objects=6, views=2)
    other = write_manifest(tmp_path / "other", objects=6, views=2, seed=1)
    run = tmp_path / "run"
    run_train(manifest_args(csv, tmp_path / "root", epochs=1), run)
    first = (run / "metrics.json").read_bytes()

    proc = run_train([f"resume={run}", "data=manifest", f"data.source.path={other}"], tmp_path / "refused", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {run}: ") and "data.source.path" in last, last
    assert (run / "metrics.json").read_bytes() == first  # the run's results untouched

    proc = run_train([f"resume={run}", "trainer.max_epochs=2"], tmp_path / "resumed")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["epoch"] == 1
    assert ckpt["hyper_parameters"]["data"]["source"]["path"] == str(csv)  # trained on the run's data
    a, b = json.loads(first), json.loads((run / "metrics.json").read_text())
    assert b["epochs"] == 2 and b["baseline/global_mean_shape_test_iou"] == a["baseline/global_mean_shape_test_iou"]
    assert "synthetic" not in proc.stdout + proc.stderr
    assert "max_epochs: 2" in (run / ".hydra" / "config.yaml").read_text()  # a later plain resume= goes as far
    # the run has now reached its max_epochs: a plain resume= would train nothing and rewrite
    # metrics.json without the train/val figures, so it is refused and the results stay
    done = (run / "metrics.json").read_bytes()
    proc = run_train([f"resume={run}"], tmp_path / "finished", check=False)
    assert proc.returncode == 2 and "the run has finished" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert (run / "metrics.json").read_bytes() == done
    # refused by the checkpoint check (finished at max_epochs=1 too): the run's saved config stays as it was
    saved = (run / ".hydra" / "config.yaml").read_bytes()
    proc = run_train([f"resume={run}", "trainer.max_epochs=1"], tmp_path / "finished1", check=False)
    assert proc.returncode == 2 and "the run has finished" in proc.stderr, proc.stderr[-2000:]
    assert (run / ".hydra" / "config.yaml").read_bytes() == saved

"""data.resolution=64 end to end on the CPU, on real files: each source makes, pools or refuses its
grids for it, the cache keys and stores it, and a small real training run at 64^3 trains, tests and
checkpoints a 64^3 network, which r2n2-eval scores as training did, r2n2-predict writes 64^3 outputs
from and r2n2-export exports (weights, ONNX)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_train, tiny, write_manifest
from helpers.reference import naive_binvox

from r2n2.data.datamodule import R2N2DataModule
from r2n2.data.errors import DataError
from r2n2.data.sources import ManifestSource, ShapeNetSource

R = 64


def _datamodule(source, cache: Path, resolution: int = R, **kw) -> R2N2DataModule:
    return R2N2DataModule(source, resolution=resolution, cache_dir=os.fspath(cache), pack_workers=0, **kw)


def test_the_shapenet_release_refuses_a_finer_resolution(shared_data, tmp_path):
    dm = _datamodule(ShapeNetSource(os.fspath(shared_data / "r2n2-sample")), tmp_path / "cache")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert message.startswith(f"{shared_data / 'r2n2-sample' / 'ShapeNetVox32'}: ")
    assert "32^3 grids; data.resolution=64" in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("train-*"))


def test_a_manifest_of_32_cubed_grids_is_refused_at_64_naming_the_file(tmp_path):
    csv = write_manifest(tmp_path / "m", grid=32)
    dm = _datamodule(ManifestSource(os.fspath(csv)), tmp_path / "cache")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    assert os.path.basename(str(err.value).split(":")[0]).startswith("obj")
    assert "(32, 32, 32) is coarser than data.resolution=64" in str(err.value)


def test_finer_manifest_grids_are_pooled_and_the_cache_is_keyed_by_resolution(tmp_path):
    """128^3 files at data.resolution=64 and =32: batches of (B, R, R, R) voxels, each the file's grid
    max-pooled, in two caches side by side."""
    csv = write_manifest(tmp_path / "m", objects=3, grid=128)
    for r in (32, 64):
        dm = _datamodule(ManifestSource(os.fspath(csv)), tmp_path / "cache", resolution=r, eval_batch_size=4)
        dm.prepare_data()
        dm.setup()
        batch = next(iter(dm.test_dataloader()))
        assert batch["voxels"].shape[1:] == (r, r, r)
        (oid,) = batch["object_id"][:1]
        grid = np.load(csv.parent / f"{oid}.npy")  # write_manifest: object objN, voxels objN.npy
        k = 128 // r
        pooled = grid.reshape(r, k, r, k, r, k).any((1, 3, 5))
        np.testing.assert_array_equal(batch["voxels"][0].numpy() > 0, pooled)
    assert len(list((tmp_path / "cache").glob("test-*"))) == 2  # one cache per resolution


# --- a small real run at 64^3 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained64(tmp_path_factory) -> tuple[Path, Path]:
    """tiny() on the synthetic source with data.resolution=64, one epoch: (run folder, data folder)."""
    run_dir, data_dir = tmp_path_factory.mktemp("run64"), tmp_path_factory.mktemp("data64")
    run_train(tiny(data_dir, epochs=1) + [f"data.resolution={R}", "logger=none"], run_dir)
    return run_dir, data_dir


def test_a_64_cubed_run_trains_tests_and_checkpoints_a_64_cubed_network(trained64):
    from r2n2.data.formats.binvox import read_binvox
    from r2n2.train.network import build_network

    run_dir, data_dir = trained64
    (made,) = (data_dir / "synthetic").glob("synth-*-r64")  # the generator's own 64^3 grids
    binvox = sorted(made.glob("ShapeNetVox64/*/*/model.binvox"))
    assert binvox and read_binvox(binvox[0]).dims == (R, R, R) and not (made / "ShapeNetVox32").exists()
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    net_config = ckpt["hyper_parameters"]["net"]
    assert net_config["resolution"] == R  # followed data.resolution
    net = build_network(net_config)
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 3, 127, 127)).shape == (1, R, R, R)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/iou@0.3", "test/iou@0.3/chair", "baseline/category_mean_shape_test_iou"):
        assert 0.0 < metrics[key] <= 1.0, (key, metrics)


# --- downstream of a 64^3 checkpoint: r2n2-eval, r2n2-predict, r2n2-export -------------------------

BIN = Path(sys.executable).parent


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_eval_scores_a_64_cubed_checkpoint_as_training_did(trained64, tmp_path):
    """r2n2-eval's IoU@0.3 and category mean shape on the test split are the training run's (two code
    paths, 64^3 grids), with F-scores@1% and its figures."""
    run_dir, _ = trained64
    out = tmp_path / "eval"
    _run([str(BIN / "r2n2-eval"), f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "fscore.points=2048",
          f"hydra.run.dir={out}"])  # fmt: skip
    result, metrics = json.loads((out / "eval.json").read_text()), json.loads((run_dir / "metrics.json").read_text())
    one = result["model"]["1"]
    assert one["iou@0.3"]["mean_over_samples"] == pytest.approx(metrics["test/iou@0.3"], abs=1e-4)
    assert one["iou@0.3"]["per_category"]["chair"] == pytest.approx(metrics["test/iou@0.3/chair"], abs=1e-4)
    category_mean = result["baselines"]["category mean shape"]["iou@0.3"]["mean_over_samples"]
    assert category_mean == pytest.approx(metrics["baseline/category_mean_shape_test_iou"], abs=1e-4)
    assert 0.0 <= one["fscore@1%"]["mean_over_samples"] <= 1.0
    for name in ("best.png", "worst.png", "iou_vs_threshold.png", "reconstructions.html"):
        assert (out / name).stat().st_size > 0, name
    assert '"r": 64' in (out / "reconstructions.html").read_text()
    assert (run_dir / "reconstructions" / "epoch_000.png").stat().st_size > 0  # the training figure


def test_predict_writes_64_cubed_outputs(trained64, shared_data, tmp_path):
    run_dir, _ = trained64
    out = tmp_path / "pred"
    photos = [str(shared_data / "photos" / f"{i}.png") for i in range(2)]
    _run([str(BIN / "r2n2-predict"), "--ckpt", str(run_dir / "checkpoints" / "best.ckpt"), *photos, "--out",
          str(out), "--html"])  # fmt: skip
    probs = np.load(out / "prediction.npy")
    assert probs.shape == (R, R, R) and probs.dtype == np.float32
    grid, dims, _, scale = naive_binvox(out / "prediction.binvox")  # an independent reader
    assert dims == (R, R, R) and scale == 1.0 and np.array_equal(grid, probs >= 0.3)
    verts = np.array([[float(x) for x in line.split()[1:]] for line in (out / "prediction.obj").read_text().splitlines()
                      if line.startswith("v ")])  # fmt: skip
    if grid.any():  # the mesh spans the unit cube whatever R is
        assert len(verts) and np.abs(verts).max() <= 0.5 + 1e-6
    assert (out / "prediction.png").stat().st_size > 0
    assert '"r": 64' in (out / "prediction.html").read_text()


@pytest.mark.parametrize("fmt", ["weights", pytest.param("onnx", marks=pytest.mark.slow)])
def test_export_a_64_cubed_network(trained64, shared_data, tmp_path, fmt):
    """r2n2-export checks the exported logits against PyTorch's for 1..5 views itself (rc 0); the ONNX
    model's output is (B, 64, 64, 64) and r2n2-predict reads the weights file."""
    run_dir, _ = trained64
    out = tmp_path / f"model.{fmt}"
    _run([str(BIN / "r2n2-export"), "--ckpt", str(run_dir / "checkpoints" / "best.ckpt"), "--format", fmt, "--out",
          str(out)])  # fmt: skip
    photo = str(shared_data / "photos" / "0.png")
    if fmt == "onnx":
        import onnxruntime as ort

        from r2n2.cli.predict import load_views

        session = ort.InferenceSession(str(out))
        (logits,) = session.run(None, {"images": load_views([photo]).numpy()})
        assert logits.shape == (1, R, R, R)
    else:
        _run([str(BIN / "r2n2-predict"), "--ckpt", str(out), photo, "--out", str(tmp_path / "p")])
        assert np.load(tmp_path / "p" / "prediction.npy").shape == (R, R, R)

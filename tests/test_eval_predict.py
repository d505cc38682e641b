"""r2n2-eval and r2n2-predict as users run them (console scripts, real processes), on a checkpoint
trained in the test suite; plus the evaluation arithmetic against hand computations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.reference import naive_binvox

from r2n2.evaluation import report as E
from r2n2.evaluation.fscore import fscore_points, surface_points, voxel_fscore

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    run_dir, _ = trained
    out = tmp_path_factory.mktemp("eval")
    proc = run(
        [
            str(BIN / "r2n2-eval"),
            f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
            "precision=bf16",
            "fscore.points=2048",
            f"hydra.run.dir={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "eval.json").read_text()), proc


# --- r2n2-eval ----------------------------------------------------------------------------------------


def test_eval_writes_tables_json_and_figures(evaluated):
    out, result, proc = evaluated
    for name in ("eval.json", "eval.md", "iou_vs_threshold.png", "worst.png", "best.png"):
        assert (out / name).is_file(), name
    md = (out / "eval.md").read_text()
    assert "mean over samples" in md and "mean of category means" in md and "F-score@1%" in md
    assert md.strip() in proc.stdout  # the table is printed too
    # the tiny data has 3 views per object, so 1..3 views; 4 thresholds; 3 categories
    assert sorted(result["model"]) == ["1", "2", "3"]
    one = result["model"]["1"]
    assert set(one) == {"iou@0.2", "iou@0.3", "iou@0.4", "iou@0.5", "fscore@1%"}
    assert set(one["iou@0.3"]["per_category"]) == {"airplane", "chair", "table"}
    cats = one["iou@0.3"]["per_category"]
    assert one["iou@0.3"]["mean_of_category_means"] == pytest.approx(np.mean(list(cats.values())))
    assert set(result["baselines"]) == {
        "global mean shape",
        "category mean shape",
        "clustering",
        "retrieval",
        "oracle nearest neighbour",
    }
    base = {k: v["iou@0.3"]["mean_over_samples"] for k, v in result["baselines"].items()}
    assert base["oracle nearest neighbour"] >= base["retrieval"]  # the oracle bounds any retrieval


def test_eval_agrees_with_the_training_run_test_metric(trained, evaluated):
    """Two code paths (Lightning's VoxelIoU during training, r2n2-eval) on the same checkpoint and
    test split give the same IoU@0.3 and the same mean-shape baseline."""
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _, result, _ = evaluated
    assert result["model"]["1"]["iou@0.3"]["mean_over_samples"] == pytest.approx(metrics["test/iou"], abs=2e-3)
    assert result["baselines"]["global mean shape"]["iou@0.3"]["mean_over_samples"] == pytest.approx(
        metrics["baseline/global_mean_shape_test_iou"], abs=1e-6
    )


def test_eval_chooses_the_threshold_on_val(trained, evaluated):
    """The chosen threshold is the argmax of val IoU, recomputed here from val predictions."""
    import hydra

    from r2n2.train.checkpoint import load_module

    run_dir, _ = trained
    _, result, _ = evaluated
    module, ckpt = load_module(run_dir / "checkpoints" / "best.ckpt")
    dm = hydra.utils.instantiate(ckpt["hyper_parameters"]["data"])
    dm.setup()
    from r2n2.data.transforms import to_images
    from r2n2.evaluation.metrics import voxel_iou_thresholds

    probs, gts = [], []  # a plain forward over the val loader: independent of r2n2.evaluation.scoring
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in dm.val_dataloader():
            probs.append(torch.sigmoid(module.net.eval()(to_images(batch["rgba"])).float()))
            gts.append(batch["voxels"].bool())
    probs, gts = torch.cat(probs), torch.cat(gts)
    ious = [float(voxel_iou_thresholds(probs, gts, torch.tensor([t])).mean()) for t in E.SELECTION_GRID]
    sel = result["threshold_selection"]
    assert sel["threshold"] == pytest.approx(E.SELECTION_GRID[int(np.argmax(ious))])
    assert sel["val_iou"] == pytest.approx(max(ious), abs=2e-3)


def test_eval_of_view_counts_without_one(trained, tmp_path):
    """`views=[2]` reports 2 views only, yet still chooses the threshold on val and draws the figures
    (both read at 1 view): it used to end in a KeyError after the whole scoring pass."""
    run_dir, _ = trained
    out = tmp_path / "v2"
    proc = run(
        [
            str(BIN / "r2n2-eval"),
            f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
            "views=[2]",
            "fscore.points=512",
            "fscore.workers=0",
            "recognition=false",
            "progress=false",
            f"hydra.run.dir={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "eval.json").read_text())
    assert sorted(result["model"]) == ["2"]
    assert result["threshold_selection"]["chosen_on"] == "val" and "test_iou" in result["threshold_selection"]
    assert (out / "iou_vs_threshold.png").is_file() and (out / "worst.png").is_file()


def test_summary_means_by_hand():
    s = E.Scores(np.array(["a", "a", "a", "b"]), (0.3,), np.array([[0.1], [0.2], [0.3], [0.9]]))
    out = s.summary()["iou@0.3"]
    assert out["mean_over_samples"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.9) / 4)
    assert out["mean_of_category_means"] == pytest.approx((0.2 + 0.9) / 2)
    assert out["per_category"] == pytest.approx({"a": 0.2, "b": 0.9})


# --- F-score ------------------------------------------------------------------------------------------


def test_fscore_of_point_sets_by_hand():
    gt = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    pred = np.array([[0.005, 0, 0], [1, 0.5, 0]], float)  # one within 1% of gt, one far
    precision, recall = 1 / 2, 1 / 4
    assert fscore_points(pred, gt, 0.01) == pytest.approx(2 * precision * recall / (precision + recall))
    assert fscore_points(np.zeros((0, 3)), gt) == 0.0 and fscore_points(np.zeros((0, 3)), np.zeros((0, 3))) == 1.0


def test_voxel_fscore_rewards_the_right_shape(shared_data):
    from r2n2.data.formats import load_voxels

    gt = load_voxels(shared_data / "r2n2-sample/ShapeNetVox32/03001627/pix2voxkeras_chair/model.binvox")
    same = voxel_fscore(gt, gt, n=20000)
    shifted = voxel_fscore(np.roll(gt, 2, axis=0), gt, n=20000)
    assert same > 0.9 and shifted < same - 0.3
    pts = surface_points(gt, 5000)
    assert pts.shape == (5000, 3) and pts.min() >= 0 and pts.max() <= 1
    assert voxel_fscore(np.zeros_like(gt), gt) == 0.0


# --- r2n2-predict -------------------------------------------------------------------------------------


def test_predict_on_real_photos(trained, shared_data, tmp_path):
    run_dir, _ = trained
    photos = [shared_data / "photos" / f"{i}.png" for i in range(3)]
    out = tmp_path / "pred"
    proc = run(
        [
            str(BIN / "r2n2-predict"),
            "--ckpt",
            str(run_dir / "checkpoints" / "best.ckpt"),
            *map(str, photos),
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probs = np.load(out / "prediction.npy")
    assert probs.shape == (32, 32, 32) and probs.dtype == np.float32 and 0 <= probs.min() <= probs.max() <= 1
    grid, dims, translate, scale = naive_binvox(out / "prediction.binvox")  # an independent reader
    assert np.array_equal(grid, probs >= 0.3) and dims == (32, 32, 32) and scale == 1.0
    verts, faces = _read_obj(out / "prediction.obj")
    if grid.any():
        assert len(faces) > 0 and np.abs(verts).max() <= 0.5 + 1e-6
        assert faces.min() >= 1 and faces.max() <= len(verts)
    from PIL import Image

    assert Image.open(out / "prediction.png").size[0] > 100
    assert "3 view(s)" in proc.stdout


def test_predict_accepts_rgba_and_jpeg_of_any_size(trained, shared_data, tmp_path):
    from PIL import Image

    run_dir, _ = trained
    jpeg = tmp_path / "wide.jpg"
    Image.open(shared_data / "photos" / "1.png").convert("RGB").resize((300, 170)).save(jpeg, quality=90)
    rgba = shared_data / "r2n2-sample/ShapeNetRendering/03001627/pix2voxkeras_chair/rendering/05.png"
    for i, img in enumerate((jpeg, rgba)):
        proc = run(
            [
                str(BIN / "r2n2-predict"),
                "--ckpt",
                str(run_dir / "checkpoints" / "best.ckpt"),
                str(img),
                "--out",
                str(tmp_path / f"o{i}"),
            ]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / f"o{i}" / "prediction.obj").is_file()


def test_frame_object_centres_the_object_at_the_rendering_scale():
    from r2n2.data.transforms import OBJECT_FILL, frame_object

    img = np.full((100, 200, 4), 255, np.uint8)
    img[60:80, 20:60, :3] = 30  # a dark 20 x 40 object on white, off centre
    out = frame_object(img)
    side = round(40 / OBJECT_FILL)
    assert out.shape == (side, side, 4)
    dark = np.argwhere(out[..., 0] < 128)
    assert dark[:, 1].min() == pytest.approx((side - 40) / 2, abs=1) and dark.shape[0] == 20 * 40
    assert (out[0, 0, :3] == 255).all()  # padded with the background colour


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    v, f = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:]])
        elif line.startswith("f "):
            f.append([int(x) for x in line.split()[1:]])
    return np.array(v).reshape(-1, 3), np.array(f, dtype=int).reshape(-1, 3)


# --- bad input: one clear line, non-zero exit, no traceback --------------------------------------------


def _bad_checkpoints(trained, shared_data, tmp_path) -> dict[str, Path]:
    run_dir, _ = trained
    good = run_dir / "checkpoints" / "best.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_ckpt = tmp_path / "photo.ckpt"
    shutil.copy(shared_data / "photos" / "0.png", not_ckpt)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, other)
    misfit = tmp_path / "misfit.ckpt"
    ckpt = torch.load(good, weights_only=True)
    ckpt["hyper_parameters"]["net"]["hidden_size"] = 64  # the weights are for 128
    torch.save(ckpt, misfit)
    return {
        "truncated": truncated,
        "not a checkpoint": not_ckpt,
        "another model": other,
        "do not fit": misfit,
        "no such": tmp_path / "missing.ckpt",
    }


def _assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1, proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.slow
def test_bad_checkpoints_give_one_clear_line(trained, shared_data, tmp_path):
    for expected, path in _bad_checkpoints(trained, shared_data, tmp_path).items():
        word = {
            "truncated": "truncated",
            "not a checkpoint": "not a readable PyTorch checkpoint",
            "another model": "another model",
            "do not fit": "do not fit",
            "no such": "no such",
        }[expected]
        ev = run([str(BIN / "r2n2-eval"), f"ckpt={path}", f"hydra.run.dir={tmp_path / 'e'}"])
        _assert_clean_error(ev, str(path), word)
        pr = run(
            [
                str(BIN / "r2n2-predict"),
                "--ckpt",
                str(path),
                str(shared_data / "photos" / "0.png"),
                "--out",
                str(tmp_path / "p"),
            ]
        )
        _assert_clean_error(pr, str(path), word)


def test_unreadable_image_and_empty_data_root_give_one_clear_line(trained, tmp_path):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    _assert_clean_error(
        run([str(BIN / "r2n2-predict"), "--ckpt", str(ckpt), str(broken), "--out", str(tmp_path / "p")]), str(broken)
    )
    empty = tmp_path / "ShapeNet"
    (empty / "ShapeNetRendering").mkdir(parents=True)
    ev = run(
        [
            str(BIN / "r2n2-eval"),
            f"ckpt={ckpt}",
            "data=shapenet",
            f"data.source.root={empty}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'e'}",
        ]
    )
    _assert_clean_error(ev, str(empty), "no samples")

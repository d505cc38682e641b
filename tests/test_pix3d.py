"""data=pix3d on a small dataset in Pix3D's exact layout, built here from real files: ShapeNet renderings
(their alpha as the mask) and real photos pasted into larger photos; voxel.mat files (128^3) written in
Pix3D's documented axis order (+x leftward, +y outward, +z upward, in canonical view: xingyuansun/pix3d
README.md at e54d4b2), of asymmetric shapes built here part by part; and r2n2-eval of a trained
checkpoint on it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_viewer import CHROMIUM, _check_draws, _page_data

from r2n2.data.datamodule import R2N2DataModule
from r2n2.data.errors import DataError
from r2n2.data.formats import load_voxels, read_rgba
from r2n2.data.sources import ErrorPolicy, Pix3DSource
from r2n2.data.sources.pix3d import VOXEL_VERSION, square_box

BIN = Path(sys.executable).parent
SAMPLE = "r2n2-sample"
CANVAS = (240, 180)  # photo width, height


def _rendering(shared: Path, synset: str, name: str, view: int) -> np.ndarray:
    return read_rgba(shared / SAMPLE / "ShapeNetRendering" / synset / name / "rendering" / f"{view:02d}.png")


def _paste(background: np.ndarray, rgba: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite ``rgba`` onto ``background`` with its top-left corner at (x, y) (may stick out)."""
    photo, mask = background.astype(np.float32).copy(), np.zeros(background.shape[:2], np.uint8)
    h, w = rgba.shape[:2]
    H, W = mask.shape
    ys, xs = slice(max(y, 0), min(y + h, H)), slice(max(x, 0), min(x + w, W))
    part = rgba[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
    a = part[..., 3:] / 255.0
    photo[ys, xs] = part[..., :3] * a + photo[ys, xs] * (1 - a)
    mask[ys, xs] = np.where(part[..., 3] > 127, 255, 0)
    return photo.round().astype(np.uint8), mask


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


# Shapes as boxes in the object's own directions, 32^3 voxel ranges [lo, hi) along (left, front, up):
# "left" is the left of a viewer facing the object's front. Each is asymmetric along all three.
SHAPES = {
    # a chair: four legs, a seat, a backrest at the back and an armrest on the viewer's left only
    "chair/chair_a": [
        ((9, 11), (9, 11), (0, 14)),
        ((21, 23), (9, 11), (0, 14)),
        ((9, 11), (21, 23), (0, 14)),
        ((21, 23), (21, 23), (0, 14)),
        ((9, 23), (9, 23), (14, 17)),
        ((9, 23), (9, 12), (17, 31)),
        ((20, 23), (9, 23), (17, 20)),
    ],
    # a tall thin post at the back, its foot pointing to the front, a short arm to the viewer's left on top
    "chair/armchair": [((14, 18), (6, 10), (0, 30)), ((14, 18), (10, 26), (0, 3)), ((18, 26), (6, 10), (26, 30))],
    # a bench: long left to right, a backrest at the back, on a plinth shifted to the viewer's right
    "bench/bench_a": [((1, 31), (10, 22), (8, 12)), ((1, 31), (10, 13), (12, 20)), ((3, 14), (12, 20), (0, 8))],
}
# where each direction lies in an array's axes: (axis of left, axis of front, axis of up), all increasing
PIX3D_AXES = (0, 1, 2)  # Pix3D's voxel.mat: +x leftward, +y outward (towards the viewer: the front), +z up
PROJECT_AXES = (2, 0, 1)  # the project's ShapeNetVox32 order: +x the front, +y up, +z the viewer's left


def shape_grid(parts, axes: tuple[int, int, int]) -> np.ndarray:
    """The 32^3 bool grid of ``parts`` (boxes in (left, front, up)) with those directions on ``axes``."""
    grid = np.zeros((32, 32, 32), bool)
    for box in parts:
        index = [slice(None)] * 3
        for (lo, hi), axis in zip(box, axes):
            index[axis] = slice(lo, hi)
        grid[tuple(index)] = True
    return grid


def _voxel_mat(path: Path, grid32: np.ndarray) -> None:
    """Pix3D's format: key ``voxel``, 128^3 (each 32^3 voxel becomes 4^3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    big = grid32.astype(np.uint8).repeat(4, 0).repeat(4, 1).repeat(4, 2)
    scipy.io.savemat(path, {"voxel": big}, do_compression=True)


def build_pix3d(shared: Path, root: Path) -> dict:
    """Pix3D layout under ``root``; returns {photo key: (photo, mask, source RGBA, offset)} and the grids
    each model must give in the project's axis order."""
    background = np.asarray(Image.open(shared / "photos" / "2.png").convert("RGB").resize(CANVAS))
    for model, parts in SHAPES.items():  # written in Pix3D's order, never from a project-order grid
        _voxel_mat(root / "model" / model / "voxel.mat", shape_grid(parts, PIX3D_AXES))
    photo_rgba = read_rgba(shared / "photos" / "0.png")
    photo_rgba[..., 3] = np.where(np.abs(photo_rgba[..., :3].astype(int) - 255).max(-1) > 25, 255, 0)
    shots = {  # name: (category, model, source RGBA, x, y, suffix, flags)
        "0001": ("chair", "chair_a", _rendering(shared, "03001627", "pix2voxkeras_chair", 0), 60, 20, "jpg", {}),
        "0002": (
            "chair",
            "chair_a",
            _rendering(shared, "03001627", "pix2voxkeras_chair", 6),
            90,
            30,
            "png",
            {"occluded": True},
        ),
        "0003": ("chair", "armchair", photo_rgba, 20, 40, "png", {}),
        "0004": (
            "bench",
            "bench_a",
            _rendering(shared, "02828884", "pix2voxkeras_bench", 3),
            50,
            105,
            "png",
            {"truncated": True},
        ),
        "0005": ("bench", "bench_a", _rendering(shared, "02828884", "pix2voxkeras_bench", 9), 50, 25, "jpg", {}),
    }
    entries, made = [], {}
    for name, (cat, model, rgba, x, y, suffix, flags) in shots.items():
        photo, mask = _paste(background, rgba, x, y)
        img, msk = f"img/{cat}/{name}.{suffix}", f"mask/{cat}/{name}.png"
        for rel, arr in ((img, photo), (msk, mask)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / rel, quality=95)
        entries.append(
            {
                "img": img,
                "mask": msk,
                "category": cat,
                "img_size": list(CANVAS),
                "bbox": _bbox(mask),
                "model": f"model/{cat}/{model}/model.obj",
                "voxel": f"model/{cat}/{model}/voxel.mat",
                "truncated": flags.get("truncated", False),
                "occluded": flags.get("occluded", False),
                "slightly_occluded": False,
                "focal_length": 35.0,
            }
        )
        made[f"{cat}/{name}"] = (np.asarray(Image.open(root / img).convert("RGB")), mask, rgba, (x, y))
    (root / "pix3d.json").write_text(json.dumps(entries))
    # Pix2Vox's Pix3D.json: photos, not models, are split (chair_a is in both); 0005 is not listed
    (root / "Pix3D.json").write_text(
        json.dumps(
            [
                {"taxonomy_id": "chair", "taxonomy_name": "chair", "train": ["0001", "0003"], "test": ["0002"]},
                {"taxonomy_id": "bench", "taxonomy_name": "bench", "train": [], "test": ["0004"]},
            ]
        )
    )
    return {"shots": made, "grids": {model: shape_grid(parts, PROJECT_AXES) for model, parts in SHAPES.items()}}


@pytest.fixture(scope="module")
def pix3d(shared_data, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pix3d")
    return root, build_pix3d(shared_data, root)


def _source(root: Path, tmp: Path, **kw) -> Pix3DSource:
    return Pix3DSource(str(root), crop_dir=str(tmp / "crops"), **kw)


def test_photos_are_cropped_to_their_box_as_pix2vox_and_masked(pix3d, tmp_path):
    root, made = pix3d
    records = _source(root, tmp_path, crop_size=224).records(ErrorPolicy())
    crops = {Path(p).parent.name + "/" + Path(p).stem: p for r in records for p in r.images}
    assert sorted(crops) == sorted(made["shots"])
    for key, (photo, mask, _rgba, (_x, _y)) in made["shots"].items():
        crop = read_rgba(crops[key])
        assert crop.shape == (224, 224, 4)
        alpha = crop[..., 3] > 127
        # the box's longer side fills the square crop, centred (Pix2Vox's CenterCrop with a box)
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        longer = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert longer >= 0.97 * 224, (key, longer)
        centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
        assert np.allclose(centre, 111.5, atol=3), (key, centre)
        # the alpha is the mask and the colours the photo's: the same square cut from photo and mask by
        # hand (independent indexing) and resized must agree with the crop
        left, top, right, bottom = square_box(_bbox(mask), *CANVAS)
        side = right - left + 1
        canvas_rgb = np.zeros((side, side, 3), np.uint8)
        canvas_mask = np.zeros((side, side), np.uint8)
        for r in range(max(top, 0), min(bottom, CANVAS[1] - 1) + 1):
            c0, c1 = max(left, 0), min(right, CANVAS[0] - 1)
            canvas_rgb[r - top, c0 - left : c1 - left + 1] = photo[r, c0 : c1 + 1]
            canvas_mask[r - top, c0 - left : c1 - left + 1] = mask[r, c0 : c1 + 1]
        want_mask = np.asarray(Image.fromarray(canvas_mask).resize((224, 224), Image.BILINEAR)) > 127
        assert (want_mask != alpha).mean() < 0.01, key
        inner = want_mask & alpha & (np.asarray(Image.fromarray(canvas_mask).resize((224, 224))) == 255)
        want_rgb = np.asarray(Image.fromarray(canvas_rgb).resize((224, 224), Image.BILINEAR)).astype(int)
        assert np.abs(crop[..., :3].astype(int) - want_rgb)[inner].mean() < 6, key
    # the truncated bench is cut by the photo's lower edge and its square crop reaches below the photo:
    # there the crop is transparent
    crop = read_rgba(crops["bench/0004"])
    left, top, right, bottom = square_box(_bbox(made["shots"]["bench/0004"][1]), *CANVAS)
    outside = int((bottom - (CANVAS[1] - 1)) * 224 / (bottom - top + 1))
    assert outside >= 4 and (crop[-outside + 1 :, :, 3] == 0).all() and crop[: -outside - 2, :, 3].any()
    # mask=false: the photo as Pix2Vox feeds it, its background and the edge padding opaque
    unmasked = _source(root, tmp_path, mask=False).records(ErrorPolicy())
    crop = read_rgba(next(p for r in unmasked for p in r.images if p.endswith("0004.png")))
    assert (crop[..., 3] == 255).all() and np.abs(crop[-2, :, :3].astype(int) - crop[-outside - 1, :, :3]).mean() < 8


def test_objects_flags_and_the_pix2vox_split(pix3d, tmp_path):
    root, _ = pix3d
    by_model = _source(root, tmp_path).records(ErrorPolicy())
    assert {r.object_id: (r.category, len(r.images), r.split) for r in by_model} == {
        "chair/chair_a/voxel": ("chair", 2, None),
        "chair/armchair/voxel": ("chair", 1, None),
        "bench/bench_a/voxel": ("bench", 2, None),
    }
    kept = _source(root, tmp_path, drop_truncated=True, drop_occluded=True).records(ErrorPolicy())
    assert sum(len(r.images) for r in kept) == 3  # 0002 occluded and 0004 truncated are left out
    assert [r.object_id for r in _source(root, tmp_path, categories=["bench"]).records(ErrorPolicy())] == [
        "bench/bench_a/voxel"
    ]
    split = _source(root, tmp_path, taxonomy="Pix3D.json").records(ErrorPolicy())
    assert {r.object_id: (len(r.images), r.split) for r in split} == {
        "chair/chair_a/voxel@train": (1, "train"),
        "chair/chair_a/voxel@test": (1, "test"),
        "chair/armchair/voxel@train": (1, "train"),
        "bench/bench_a/voxel@test": (1, "test"),
    }


def test_split_by_photos_says_so_at_run_time(pix3d, tmp_path, caplog):
    """Pix2Vox's Pix3D.json splits photos: a model with photos in train and test is logged, with the count."""
    root, _ = pix3d
    with caplog.at_level(logging.INFO, logger="r2n2.data.sources.pix3d"):
        _source(root, tmp_path, taxonomy="Pix3D.json").records(ErrorPolicy())
    said = [r for r in caplog.records if "more than one split" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.text
    message = said[0].getMessage()
    assert "1 of 3 3D models" in message and "photo-level split" in message and "Pix2Vox" in message, message
    assert "chair/chair_a" in message, message
    caplog.clear()  # split per model (no taxonomy), or a taxonomy that keeps each model in one split: silent
    with caplog.at_level(logging.INFO, logger="r2n2.data.sources.pix3d"):
        _source(root, tmp_path).records(ErrorPolicy())
        _source(root, tmp_path, taxonomy="Pix3D.json", categories=["bench"]).records(ErrorPolicy())
    assert not [r for r in caplog.records if "more than one split" in r.getMessage()], caplog.text


def test_voxels_are_brought_from_pix3d_axes_to_the_projects(pix3d, shared_data, tmp_path):
    """voxel.mat is stored +x left, +y outward (the front), +z up; the project's grids are y up with the
    front on +x, as ShapeNetVox32 read here. Today's grid of the post: up along y, foot towards +x."""
    root, made = pix3d
    records = _source(root, tmp_path).records(ErrorPolicy())
    grids = {r.object_id.removesuffix("/voxel"): np.load(r.voxels) for r in records}
    for model, grid in grids.items():
        assert np.array_equal(grid, made["grids"][model]), model
    # kept under a versioned folder: grids an older version wrote in Pix3D's order are not reused
    assert (
        all(Path(r.voxels).relative_to(tmp_path / "crops").parts[1] == f"voxels-v{VOXEL_VERSION}" for r in records)
        and VOXEL_VERSION >= 2
    )
    post = grids["chair/armchair"]
    xs, ys, zs = (np.flatnonzero(post.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3))
    assert (ys[0], ys[-1] + 1) == (0, 30) and (xs[0], xs[-1] + 1) == (6, 26)  # 30 tall on y, 20 deep on x
    assert post[6:26, 0:3, 14:18].all() and not post[:6, 0:3].any()  # the foot runs from the post to +x
    assert post[6:10, 26:30, 18:26].all() and not post[:, 26:30, :14].any()  # the arm: to +z, on top
    # the front is where the real ShapeNetVox32 sample chair has it: both backrests on the low-x side
    real = load_voxels(shared_data / SAMPLE / "ShapeNetVox32/03001627/pix2voxkeras_chair/model.binvox")
    for chair in (real, grids["chair/chair_a"]):
        layers = chair.sum(axis=(0, 2))  # voxels per height y
        assert 12 <= int(np.argmax(layers)) <= 18  # the seat, the fullest layer, halfway up
        top = np.flatnonzero(layers)[-1]
        assert np.flatnonzero(chair[:, top].any(1)).max() < 12  # the backrest's top: at low x only
    # the voxel.mat read in its stored order would not match (the grid of every model is asymmetric)
    for model, parts in SHAPES.items():
        assert not np.array_equal(shape_grid(parts, PIX3D_AXES), made["grids"][model]), model


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_datamodule_packs_pooled_voxels_and_crops(pix3d, tmp_path, resolution):
    root, made = pix3d
    dm = R2N2DataModule(
        _source(root, tmp_path, taxonomy="Pix3D.json"),
        cache_dir=str(tmp_path / "cache"),
        pack_workers=0,
        eval_batch_size=4,
        resolution=resolution,
    )
    k = resolution // 32  # the 128^3 files hold each voxel of a 32^3 grid as a 4^3 block
    dm.prepare_data()
    dm.setup()
    assert sorted(dm.datasets) == ["test", "train"] and len(dm.datasets["train"]) == 2
    for split in dm.datasets.values():
        for i in range(len(split)):
            item = split[i]
            model = item["object_id"].split("@")[0].removesuffix("/voxel")
            # 128^3 max-pooled to R^3 (kept at 128) gives back the grid it was made from, in the project's axes
            expected = made["grids"][model].repeat(k, 0).repeat(k, 1).repeat(k, 2)
            assert np.array_equal(np.asarray(item["voxels"]) > 0, expected), model
            assert item["rgba"].shape == (1, 127, 127, 4)
    batch = next(iter(dm.test_dataloader()))
    assert (
        batch["rgba"].shape[1:] == (1, 127, 127, 4)
        if "rgba" in batch
        else batch["images"].shape[1:] == (1, 3, 127, 127)
    )


def test_bad_pix3d_input_names_the_file(pix3d, tmp_path):
    root, _ = pix3d
    broken = tmp_path / "broken"
    broken.mkdir()
    entries = json.loads((root / "pix3d.json").read_text())
    entries[1]["mask"] = "mask/chair/missing.png"
    (broken / "pix3d.json").write_text(json.dumps(entries))
    for d in ("img", "mask", "model"):
        (broken / d).symlink_to(root / d)
    with pytest.raises(DataError, match="mask file not found") as e:
        _source(broken, tmp_path).records(ErrorPolicy())
    assert "mask/chair/missing.png" in str(e.value)
    errors = ErrorPolicy("skip")
    assert sum(len(r.images) for r in _source(broken, tmp_path).records(errors)) == 4 and len(errors.skipped) == 1
    entries[1]["mask"], entries[2]["voxel"] = entries[0]["mask"], "model/chair/gone/voxel.mat"
    (broken / "pix3d.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match="voxel file not found") as e:
        _source(broken, tmp_path).records(ErrorPolicy())
    assert "model/chair/gone/voxel.mat" in str(e.value)
    with pytest.raises(DataError, match="Pix3D annotations not found"):
        _source(tmp_path / "nowhere", tmp_path).prepare({})


@pytest.mark.slow
def test_eval_of_a_trained_checkpoint_on_pix3d(trained, pix3d, tmp_path):
    run_dir, _ = trained
    root, _ = pix3d
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            str(BIN / "r2n2-eval"),
            f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
            "data=pix3d",
            f"data.source.root={root}",
            "data.source.taxonomy=Pix3D.json",
            f"data.source.crop_dir={tmp_path / 'crops'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "fscore.points=512",
            "fscore.workers=0",
            "recognition=false",
            "figure_samples=1",
            "progress=false",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["num_samples"] == 2 and sorted(result["model"]) == ["1"]  # 1 photo per test object
    per_category = result["model"]["1"]["iou@0.3"]["per_category"]
    assert sorted(per_category) == ["bench", "chair"] and all(0 <= v <= 1 for v in per_category.values())
    # the worst and the best sample as rotatable voxels, with ground truth and IoU
    rows = _page_data((out / "reconstructions.html").read_text())
    assert len(rows) == 2 and all(r["gt"] is not None and 0 <= r["iou"] <= 1 for r in rows)
    if CHROMIUM:
        _check_draws(out / "reconstructions.html", tmp_path, [x for r in rows for x in (True, r["occupied"] > 0)])

"""The built-in synthetic ShapeNet (r2n2.data.synth): geometry, voxels, renderings, layout, determinism, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from r2n2.data.camera import (
    AZIMUTH_RANGE,
    DIST_RATIO_RANGE,
    ELEVATION_RANGE,
    RENDER_SIZE,
    View,
    mask_iou,
    parse_metadata,
    pixel_rays,
    voxel_silhouette,
)
from r2n2.data.formats.binvox import read_binvox
from r2n2.data.synth import CATEGORIES, generate_dataset, make_object, render
from r2n2.data.synth.generate import object_rngs, sample_views, split_indices
from r2n2.data.synth.primitives import Box, Frustum
from r2n2.data.synth.render import window_rays
from r2n2.data.synth.voxelize import reference_voxelize, voxelize

ROOT = Path(__file__).resolve().parents[1]
SYNSETS = {
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "speaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "watercraft",
}
VIEWS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """1 object per category, 4 views, made with 2 worker processes."""
    return generate_dataset(
        tmp_path_factory.mktemp("synth") / "ds", objects_per_category=1, views=VIEWS, seed=3, workers=2
    )


def by_name(name: str) -> str:
    return next(s for s, n in CATEGORIES.items() if n == name)


def objects(root: Path):
    """(synset, object_id, rendering folder, binvox path) of every object on disk."""
    for folder in sorted((root / "ShapeNetRendering").glob("*/*/rendering")):
        synset, oid = folder.parts[-3], folder.parts[-2]
        yield synset, oid, folder, root / "ShapeNetVox32" / synset / oid / "model.binvox"


# ---- categories and objects -------------------------------------------------------------------


def test_categories_are_the_13_r2n2_synsets():
    assert dict(CATEGORIES) == SYNSETS
    assert list(CATEGORIES) == sorted(SYNSETS)


@pytest.mark.parametrize("synset", list(SYNSETS))
def test_object_is_shapenet_normalised_and_solid(synset):
    obj = make_object(synset, np.random.default_rng(0))
    boxes = [p.aabb() for p in obj.primitives]
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    np.testing.assert_allclose(lo + hi, 0.0, atol=1e-12)  # bounding box centred at the origin
    assert np.linalg.norm(hi - lo) == pytest.approx(1.0)  # bounding-box diagonal 1
    assert obj.scale == pytest.approx((hi - lo).max())
    np.testing.assert_allclose(obj.translate, lo)
    v = obj.voxels
    assert v.shape == (32, 32, 32) and v.dtype == bool
    longest = int(np.argmax(hi - lo))  # the object spans the grid along its longest side
    assert v.any(axis=tuple(a for a in range(3) if a != longest))[[0, -1]].all()
    assert ndimage.label(v)[1] == 1  # one 6-connected piece: parts touch, thin parts survive
    assert (ndimage.binary_fill_holes(v) == v).all()  # solid: no enclosed cavities


def test_objects_vary_and_the_frame_is_consistent():
    rng = np.random.default_rng(5)
    for name in ("car", "rifle", "watercraft"):  # long along x (nose / muzzle / bow at +x)
        for _ in range(3):
            obj = make_object(by_name(name), rng)
            assert np.argmax(-obj.translate) == 0, name
    for name in ("bench", "sofa"):  # seats face +x, so they are wide along z
        obj = make_object(by_name(name), rng)
        assert -obj.translate[2] > -obj.translate[0], name
    for _ in range(3):  # a chair's back is at -x: the top layers lie at x < 0
        v = make_object(by_name("chair"), rng).voxels
        top = np.argwhere(v[:, 26:, :])
        assert top[:, 0].mean() < 15.5
    sizes = {make_object(by_name("chair"), np.random.default_rng(k)).voxels.sum() for k in range(4)}
    assert len(sizes) == 4  # random proportions


# ---- voxelisation -----------------------------------------------------------------------------


def cube_gap(prims, scale: float, voxels: np.ndarray, k: int = 9) -> np.ndarray:
    """For each occupied voxel: the smallest signed distance (in voxels) from a k^3 grid of points on
    and in the voxel cube (faces included) to the union of primitives. A voxel that the union really
    meets has a gap <= the grid's covering radius sqrt(3)/2/(k-1) = 0.108 voxel."""
    n, voxel = voxels.shape[0], scale / voxels.shape[0]
    centres = scale * ((np.argwhere(voxels) + 0.5) / n - 0.5)
    o = voxel * (np.arange(k) / (k - 1) - 0.5)
    offsets = np.stack(np.meshgrid(o, o, o, indexing="ij"), axis=-1).reshape(-1, 3)
    best = np.full(len(centres), np.inf)
    for prim in prims:
        for s in range(0, len(centres), 512):
            best[s : s + 512] = np.minimum(
                best[s : s + 512], prim.sdf(centres[s : s + 512, None] + offsets).min(axis=1)
            )
    return best / voxel


@pytest.mark.parametrize("name", ["chair", "lamp", "airplane", "table", "rifle", "bench"])
def test_voxels_against_a_fine_reference(name):
    obj = make_object(by_name(name), np.random.default_rng(7))
    ours = voxelize(obj.primitives, obj.scale, fill=False)
    ref = reference_voxelize(obj.primitives, obj.scale, samples=8)  # 256^3 inside samples
    assert not (ref & ~ours).any()  # nothing the reference finds is missed
    assert ours.sum() <= 1.5 * ref.sum()  # the rest is only voxels grazed by a surface
    gap = cube_gap(obj.primitives, obj.scale, ours)
    assert gap.max() <= math.sqrt(3) / 2 / 8 + 0.03  # every voxel is really met by a part (no over-fill)


def _thin(prim) -> float:
    """A part's smallest cross-section width (boxes, cylinders)."""
    return 2 * float(prim.half.min()) if isinstance(prim, Box) else 2 * min(prim.r0, prim.r1)


def _axis_points(prim, k: int = 200) -> np.ndarray:
    axis = prim.rot[1] * (prim.half[1] if isinstance(prim, Box) else prim.h)
    return prim.centre + np.linspace(-1, 1, k)[:, None] * axis


def _voxel_of(points: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.floor((points / scale + 0.5) * 32).astype(int), 0, 31)


def test_thin_lamp_stem_is_present_and_connected():
    for k in range(50):
        obj = make_object(by_name("lamp"), np.random.default_rng(k))
        stems = [
            p for p in obj.primitives if isinstance(p, Frustum) and p.r0 == p.r1 and _thin(p) < 0.5 * obj.scale / 32
        ]
        if stems:
            break
    else:
        pytest.fail("no lamp with a stem under half a voxel thick")
    for stem in stems:
        idx = _voxel_of(_axis_points(stem), obj.scale)
        assert obj.voxels[idx[:, 0], idx[:, 1], idx[:, 2]].all()  # every voxel along the stem is occupied
    assert ndimage.label(obj.voxels)[1] == 1


def test_thin_chair_legs_are_present_and_separate():
    for k in range(200):
        obj = make_object(by_name("chair"), np.random.default_rng(k))
        floor = min(p.aabb()[0][1] for p in obj.primitives)
        legs = [p for p in obj.primitives if p.aabb()[0][1] < floor + 1e-9]
        if len(legs) == 4 and max(_thin(p) for p in legs) < obj.scale / 32:
            break
    else:
        pytest.fail("no chair with all four legs thinner than a voxel")
    for leg in legs:
        idx = _voxel_of(_axis_points(leg), obj.scale)
        assert obj.voxels[idx[:, 0], idx[:, 1], idx[:, 2]].all()
    bottom = obj.voxels[:, idx[:, 1].min(), :]  # the floor layer holds four separate feet
    assert ndimage.label(bottom)[1] == 4
    assert ndimage.label(obj.voxels)[1] == 1


# ---- rendering --------------------------------------------------------------------------------


def test_window_rays_equal_the_camera_rays():
    view = View(123.4, 27.0, 0.8)
    full = pixel_rays(view, 3 * RENDER_SIZE)
    win = window_rays(view, 3 * RENDER_SIZE, slice(30, 200), slice(5, 411))
    np.testing.assert_allclose(np.moveaxis(win, 0, -1), full[30:200, 5:411], atol=1e-15)


def test_render_is_rgba_with_transparent_background_and_soft_edges():
    obj = make_object(by_name("car"), np.random.default_rng(1))
    img = render(obj, View(30.0, 27.5, 0.8))
    assert img.shape == (137, 137, 4) and img.dtype == np.uint8
    alpha = img[..., 3]
    assert (alpha[[0, -1]] == 0).all() and (alpha[:, [0, -1]] == 0).all()
    assert (img[alpha == 0] == 0).all()  # background RGBA 0, like ShapeNetRendering
    assert (alpha == 255).sum() > 500
    assert ((alpha > 0) & (alpha < 255)).sum() > 50  # antialiased edges
    lit = img[alpha == 255, :3].astype(int).sum(axis=1)
    assert lit.max() - lit.min() > 30  # faces are shaded differently


def test_render_silhouette_matches_the_voxels():
    rng = np.random.default_rng(2)
    for name in ("chair", "cabinet", "airplane"):
        obj = make_object(by_name(name), rng)
        view = View(float(rng.uniform(0, 360)), 26.0, 0.8)
        iou = mask_iou(voxel_silhouette(obj.voxels, view, obj.scale), render(obj, view)[..., 3] > 0)
        assert iou > 0.6, name


# ---- the dataset on disk ----------------------------------------------------------------------


def test_every_category_is_produced_in_the_r2n2_layout(dataset):
    found = list(objects(dataset))
    assert sorted(s for s, *_ in found) == sorted(SYNSETS)
    for _synset, oid, folder, binvox in found:
        assert len(oid) == 32 and int(oid, 16) >= 0  # ShapeNet-like model id
        names = (folder / "renderings.txt").read_text().split()
        assert names == [f"{i:02d}.png" for i in range(VIEWS)]
        assert sorted(p.name for p in folder.glob("*.png")) == names
        views = parse_metadata((folder / "rendering_metadata.txt").read_text())
        assert len(views) == VIEWS
        for v in views:
            assert AZIMUTH_RANGE[0] <= v.azimuth < AZIMUTH_RANGE[1]
            assert ELEVATION_RANGE[0] <= v.elevation <= ELEVATION_RANGE[1]
            assert DIST_RATIO_RANGE[0] <= v.dist_ratio <= DIST_RATIO_RANGE[1]
        for name in names:
            with Image.open(folder / name) as im:
                assert im.format == "PNG" and im.mode == "RGBA" and im.size == (137, 137)
                a = np.asarray(im)
            assert (a[[0, -1], :, 3] == 0).all() and (a[:, [0, -1], 3] == 0).all()
            assert (a[..., 3] > 0).sum() > 20
        vox = read_binvox(binvox)
        assert vox.dims == (32, 32, 32) and vox.data.any()
        assert max(vox.translate) < 0  # the bounding-box minimum of a box centred at the origin
        assert vox.scale == pytest.approx(-2 * min(vox.translate))  # grid side = largest extent
        assert np.linalg.norm(2 * np.asarray(vox.translate)) == pytest.approx(1.0, abs=1e-6)  # diagonal 1


def test_files_reproduce_the_objects(dataset):
    """The metadata and binvox on disk are exactly what make_object / sample_views give."""
    params = json.loads((dataset / "synth.json").read_text())
    synset, oid, folder, binvox = next(objects(dataset))
    shape_rng, view_rng = object_rngs(params["seed"], synset, 0)
    obj = make_object(synset, shape_rng)
    assert parse_metadata((folder / "rendering_metadata.txt").read_text()) == sample_views(view_rng, VIEWS)
    np.testing.assert_array_equal(read_binvox(binvox).data, obj.voxels)


def test_silhouette_iou_of_voxels_against_renderings(dataset):
    """Projected ground-truth voxels vs rendered alpha > 0, as checked on the real sample (~0.83)."""
    per_object = []
    for _synset, _oid, folder, binvox in objects(dataset):
        vox = read_binvox(binvox)
        views = parse_metadata((folder / "rendering_metadata.txt").read_text())
        ious = []
        for i, view in enumerate(views):
            alpha = np.asarray(Image.open(folder / f"{i:02d}.png"))[..., 3]
            ious.append(mask_iou(voxel_silhouette(vox.data, view, vox.scale), alpha > 0))
        per_object.append(np.mean(ious))
    assert len(per_object) == 13
    assert np.mean(per_object) >= 0.80, per_object
    assert min(per_object) >= 0.5, per_object


def test_taxonomy_json_splits_objects_disjointly(dataset):
    taxonomy = json.loads((dataset / "ShapeNet.json").read_text())
    assert [t["taxonomy_id"] for t in taxonomy] == list(SYNSETS)
    on_disk = {}
    for synset, oid, *_ in objects(dataset):
        on_disk.setdefault(synset, set()).add(oid)
    for entry in taxonomy:
        assert entry["taxonomy_name"] == SYNSETS[entry["taxonomy_id"]]
        assert set(entry["baseline"]) == {f"{k}-view" for k in range(1, 6)}
        train, val, test = (set(entry[k]) for k in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert train | val | test == on_disk[entry["taxonomy_id"]]
    params = json.loads((dataset / "synth.json").read_text())
    assert params["version"] >= 1 and params["seed"] == 3 and params["views"] == VIEWS


@pytest.mark.parametrize(
    "n, sizes", [(1, (1, 0, 0)), (2, (1, 0, 1)), (4, (2, 1, 1)), (10, (7, 1, 2)), (32, (22, 3, 7)), (95, (66, 9, 20))]
)
def test_split_sizes_are_70_10_20(n, sizes):
    split = split_indices(0, "03001627", n)
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(n))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_output_whatever_the_workers(tmp_path):
    kw = dict(objects_per_category=2, views=2, seed=11, categories=["chair", "04090263"])
    a = _tree(generate_dataset(tmp_path / "a", workers=1, **kw))
    b = _tree(generate_dataset(tmp_path / "b", workers=2, **kw))
    assert len(a) == 2 * 2 * (2 + 3) + 2 and a == b
    c = _tree(generate_dataset(tmp_path / "c", workers=1, **{**kw, "seed": 12}))
    assert c.keys() != a.keys()  # another seed, other objects


def test_generation_is_atomic_and_idempotent(tmp_path, monkeypatch):
    from r2n2.data.synth import generate as gen

    target = tmp_path / "ds"
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args)

    real = gen.write_renderings
    monkeypatch.setattr(gen, "write_renderings", failing)
    with pytest.raises(RuntimeError):
        generate_dataset(target, objects_per_category=1, views=1, categories=["lamp", "car"], workers=1)
    assert list(tmp_path.iterdir()) == []  # neither a half dataset nor a temporary folder
    monkeypatch.setattr(gen, "write_renderings", real)
    root = generate_dataset(target, objects_per_category=1, views=1, categories=["lamp"], workers=1)
    stamp = (root / "synth.json").stat().st_mtime_ns
    assert generate_dataset(target, objects_per_category=1, views=1, categories=["lamp"], workers=1) == root
    assert (root / "synth.json").stat().st_mtime_ns == stamp  # same parameters: reused, not rebuilt
    with pytest.raises(FileExistsError, match="made with another views; pass overwrite=True"):
        generate_dataset(target, objects_per_category=1, views=2, categories=["lamp"], workers=1)
    generate_dataset(target, objects_per_category=1, views=2, categories=["lamp"], workers=1, overwrite=True)
    assert json.loads((root / "synth.json").read_text())["views"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_cli_runs_as_a_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "r2n2.cli.synth",
            "--out",
            str(out),
            "--objects-per-category",
            "1",
            "--views",
            "2",
            "--seed",
            "4",
            "--workers",
            "2",
            "--categories",
            "table,04401088",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "synth.json").read_text())["categories"] == ["04379243", "04401088"]
    assert len(list((out / "ShapeNetRendering").glob("*/*/rendering/01.png"))) == 2
    bad = subprocess.run(
        [sys.executable, "-m", "r2n2.cli.synth", "--out", str(tmp_path / "x"), "--categories", "tank"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "tank" in bad.stderr


# ---- regeneration when the generator changes -----------------------------------------------------


def _synthetic(tmp_path):
    from r2n2.data.sources import SyntheticSource

    return SyntheticSource(
        os.fspath(tmp_path / "data"), objects_per_category=1, views=1, categories=["lamp"], workers=1
    )


def test_changed_generator_regenerates_the_set_and_keeps_the_old_one_until_the_new_is_complete(tmp_path, monkeypatch):
    """A set made by another generator version or code is regenerated on the next use; a run that
    dies while regenerating leaves the old set complete and in use."""
    from r2n2.data.synth import generate as gen

    src = _synthetic(tmp_path)
    src.prepare({})
    folder = src.folder({})
    made = json.loads((folder / "synth.json").read_text())
    assert made["generator_code"] == gen.generator_fingerprint()
    old_files = _tree(folder)
    src.prepare({})  # unchanged generator: reused as is
    assert (folder / "synth.json").read_text() == json.dumps(made, indent=2)

    # the generator's code changed and the regeneration is killed half-way: the old set stays
    monkeypatch.setattr(gen, "generator_fingerprint", lambda: "changed-code")
    monkeypatch.setattr(gen, "write_renderings", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        src.prepare({})
    assert _tree(folder) == old_files
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]

    # the next use regenerates it
    monkeypatch.undo()
    monkeypatch.setattr(gen, "generator_fingerprint", lambda: "changed-code")
    src.prepare({})
    assert json.loads((folder / "synth.json").read_text())["generator_code"] == "changed-code"
    monkeypatch.setattr(gen, "GENERATOR_VERSION", gen.GENERATOR_VERSION + 1)
    src.prepare({})
    assert json.loads((folder / "synth.json").read_text())["version"] == gen.GENERATOR_VERSION
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_generator_fingerprint_covers_every_module_that_shapes_the_output():
    from r2n2.data.synth import generate as gen

    names = {Path(p).name for p in gen.GENERATOR_MODULES}
    assert names >= {"generate.py", "shapes.py", "primitives.py", "render.py", "voxelize.py", "camera.py", "binvox.py"}
    assert all(Path(p).is_file() for p in gen.GENERATOR_MODULES)
    assert len(gen.generator_fingerprint()) == 64


def test_killed_between_the_two_renames_the_old_set_comes_back(tmp_path):
    """The swap renames root -> .old, then tmp -> root: a kill between them must not lose the set."""
    kw = dict(objects_per_category=1, views=1, categories=["lamp"], workers=1)
    root = generate_dataset(tmp_path / "ds", **kw)
    before = _tree(root)
    os.rename(root, tmp_path / f".ds.old-{os.getpid()}-abcd1234")  # what a kill right after the first rename leaves
    assert generate_dataset(tmp_path / "ds", **kw) == root
    assert _tree(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ---- finer grids (data.resolution) --------------------------------------------------------------


def test_a_64_cubed_set_voxelises_the_same_objects_finer(dataset, tmp_path):
    """resolution=64: solid 64^3 binvox files in ShapeNetVox64/ (none in ShapeNetVox32/), the same
    renderings, and grids that max-pool into the 32^3 set's (the voxeliser is conservative at both)."""
    names = ["chair", "table", "airplane"]
    root = generate_dataset(
        tmp_path / "ds64", objects_per_category=1, views=1, seed=3, categories=names, workers=1, resolution=64
    )
    assert json.loads((root / "synth.json").read_text())["voxel_grid"] == 64
    assert not (root / "ShapeNetVox32").exists()
    ious = []
    for synset in map(by_name, names):
        (oid,) = [p.name for p in (root / "ShapeNetRendering" / synset).iterdir()]
        fine = read_binvox(root / "ShapeNetVox64" / synset / oid / "model.binvox")
        coarse = read_binvox(dataset / "ShapeNetVox32" / synset / oid / "model.binvox").data
        assert fine.dims == (64, 64, 64) and fine.scale == pytest.approx(
            read_binvox(dataset / "ShapeNetVox32" / synset / oid / "model.binvox").scale
        )
        assert (ndimage.binary_fill_holes(fine.data) == fine.data).all()  # solid, as binvox fills
        pooled = fine.data.reshape(32, 2, 32, 2, 32, 2).any((1, 3, 5))
        assert not (pooled & ~coarse).any()  # nothing outside the 32^3 grid's voxels
        ious.append((pooled & coarse).sum() / (pooled | coarse).sum())
        view = Path("ShapeNetRendering") / synset / oid / "rendering" / "00.png"
        assert (root / view).read_bytes() == (dataset / view).read_bytes()
    assert np.mean(ious) > 0.8, ious

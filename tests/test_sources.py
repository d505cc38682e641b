"""Dataset sources (ShapeNet layout, CSV manifest) on the real samples, and object-level splits."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from r2n2.data.errors import DataError
from r2n2.data.formats import load_voxels, read_rgba
from r2n2.data.sources import ErrorPolicy, ManifestSource, ObjectRecord, ShapeNetSource
from r2n2.data.splits import assign_splits, select_samples

# ../shared/data/README.md: the 7 categories of the real sample (names from REFERENCE.md's 13)
SAMPLE = {
    "02691156": "airplane",
    "02828884": "bench",
    "02958343": "car",
    "03001627": "chair",
    "03636649": "lamp",
    "04090263": "rifle",
    "04530566": "watercraft",
}


def sample_root(shared: Path) -> Path:
    return shared / "r2n2-sample"


# --- ShapeNetSource -------------------------------------------------------------------------------


def test_shapenet_source_lists_the_real_sample(shared_data):
    root = sample_root(shared_data)
    src = ShapeNetSource(os.fspath(root))
    src.prepare({})
    records = src.records(ErrorPolicy("raise"))
    assert len(records) == 7
    assert {r.object_id: r.category for r in records} == {f"{s}/pix2voxkeras_{n}": n for s, n in SAMPLE.items()}
    for r in records:
        synset, model = r.object_id.split("/")
        assert r.split is None
        assert len(r.images) == 24
        assert [Path(p).name for p in r.images] == [f"{i:02d}.png" for i in range(24)]
        assert all(Path(p).parent == root / "ShapeNetRendering" / synset / model / "rendering" for p in r.images)
        assert all(Path(p).is_file() for p in r.images)
        assert Path(r.voxels) == root / "ShapeNetVox32" / synset / model / "model.binvox"
        assert load_voxels(r.voxels).shape == (32, 32, 32)
    assert json.loads(json.dumps(src.describe()))["root"] == os.fspath(root.resolve())


def test_shapenet_source_wrong_root(tmp_path):
    with pytest.raises(DataError) as err:
        ShapeNetSource(os.fspath(tmp_path)).prepare({})
    assert str(err.value).startswith(f"{tmp_path / 'ShapeNetRendering'}: ")
    # the message names the config key users set (data.source.root), not a key that does not exist
    assert "data.source.root" in str(err.value) and "data.root " not in str(err.value).replace("data.source.root", "")


@pytest.mark.parametrize("wanted", [["03001627", "02958343"], ["chair", "car"], ["chair", "02958343"]])
def test_shapenet_source_category_filter(shared_data, wanted):
    src = ShapeNetSource(os.fspath(sample_root(shared_data)), categories=wanted)
    records = src.records(ErrorPolicy("raise"))
    assert sorted(r.category for r in records) == ["car", "chair"]


def test_unquoted_synset_ids_in_a_yaml_file_still_filter(shared_data, tmp_path):
    """YAML reads 03001627 (digits 0-7, leading zero) as the octal number 787351; such a filter
    used to match nothing. Another number is refused, naming it."""
    import hydra
    from omegaconf import OmegaConf

    conf = tmp_path / "source.yaml"
    conf.write_text(
        "_target_: r2n2.data.sources.ShapeNetSource\n"
        f"root: {sample_root(shared_data)}\ncategories: [03001627, 02958343]\n"
    )
    cfg = OmegaConf.load(conf)
    assert list(cfg.categories) == [787351, "02958343"]  # what YAML makes of it
    src = hydra.utils.instantiate(cfg)
    assert sorted(r.category for r in src.records(ErrorPolicy("raise"))) == ["car", "chair"]
    with pytest.raises(ValueError, match="categories: 3001627 is a number"):
        ShapeNetSource(os.fspath(sample_root(shared_data)), categories=[3001627])


def write_taxonomy(path: Path) -> dict:
    """A Pix2Vox ShapeNet.json for the sample: our own category names and splits; one object left out."""
    entries = [
        {
            "taxonomy_id": "03001627",
            "taxonomy_name": "seat",
            "baseline": {},
            "train": ["pix2voxkeras_chair"],
            "val": [],
            "test": [],
        },
        {
            "taxonomy_id": "02958343",
            "taxonomy_name": "pickup",
            "baseline": {},
            "train": [],
            "val": ["pix2voxkeras_car"],
            "test": [],
        },
        {
            "taxonomy_id": "02691156",
            "taxonomy_name": "plane",
            "baseline": {},
            "train": [],
            "val": [],
            "test": ["pix2voxkeras_airplane"],
        },
        {
            "taxonomy_id": "04530566",
            "taxonomy_name": "boat",
            "baseline": {},
            "train": ["pix2voxkeras_watercraft"],
            "val": [],
            "test": [],
        },
    ]
    path.write_text(json.dumps(entries))
    return {
        "03001627/pix2voxkeras_chair": ("seat", "train"),
        "02958343/pix2voxkeras_car": ("pickup", "val"),
        "02691156/pix2voxkeras_airplane": ("plane", "test"),
        "04530566/pix2voxkeras_watercraft": ("boat", "train"),
    }


def test_shapenet_source_taxonomy_fixes_split_and_names(shared_data, tmp_path):
    expected = write_taxonomy(tmp_path / "ShapeNet.json")
    src = ShapeNetSource(os.fspath(sample_root(shared_data)), taxonomy=os.fspath(tmp_path / "ShapeNet.json"))
    records = src.records(ErrorPolicy("raise"))
    assert {r.object_id: (r.category, r.split) for r in records} == expected
    assert all(len(r.images) == 24 for r in records)
    # assign_splits honours the fixed splits whatever the fractions and seed
    for seed in (0, 1):
        split = assign_splits(records, {"train": 0.1, "val": 0.1, "test": 0.8}, seed)
        assert {s: sorted(r.object_id for r in v) for s, v in split.items()} == {
            "train": ["03001627/pix2voxkeras_chair", "04530566/pix2voxkeras_watercraft"],
            "val": ["02958343/pix2voxkeras_car"],
            "test": ["02691156/pix2voxkeras_airplane"],
        }
    # categories filter by the taxonomy's own names
    src = ShapeNetSource(
        os.fspath(sample_root(shared_data)),
        taxonomy=os.fspath(tmp_path / "ShapeNet.json"),
        categories=["seat", "02691156"],
    )
    assert sorted(r.category for r in src.records(ErrorPolicy("raise"))) == ["plane", "seat"]


def test_shapenet_source_taxonomy_listing_a_missing_object(shared_data, tmp_path):
    tax = tmp_path / "ShapeNet.json"
    tax.write_text(
        json.dumps(
            [
                {
                    "taxonomy_id": "03001627",
                    "taxonomy_name": "chair",
                    "train": ["pix2voxkeras_chair", "no_such_model"],
                    "val": [],
                    "test": [],
                }
            ]
        )
    )
    src = ShapeNetSource(os.fspath(sample_root(shared_data)), taxonomy=os.fspath(tax))
    missing = sample_root(shared_data) / "ShapeNetRendering" / "03001627" / "no_such_model" / "rendering"
    with pytest.raises(DataError) as err:
        src.records(ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{missing}: ")
    errors = ErrorPolicy("skip")
    assert [r.object_id for r in src.records(errors)] == ["03001627/pix2voxkeras_chair"]
    assert errors.skipped == [{"path": os.fspath(missing), "fault": "rendering folder not found"}]


@pytest.mark.parametrize("text", ["{not json", json.dumps([{"taxonomy_id": "03001627", "train": []}])])
def test_shapenet_source_bad_taxonomy(shared_data, tmp_path, text):
    tax = tmp_path / "ShapeNet.json"
    tax.write_text(text)
    with pytest.raises(DataError) as err:
        ShapeNetSource(os.fspath(sample_root(shared_data)), taxonomy=os.fspath(tax)).records(ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{tax}: ")


def test_shapenet_source_taxonomy_listing_one_object_in_two_splits_is_refused(shared_data, tmp_path):
    """An object in two splits would leak between training and test: refused, naming it and the file."""
    tax = tmp_path / "ShapeNet.json"
    tax.write_text(
        json.dumps(
            [
                {
                    "taxonomy_id": "03001627",
                    "taxonomy_name": "chair",
                    "train": ["pix2voxkeras_chair"],
                    "val": [],
                    "test": ["pix2voxkeras_chair"],
                },
                {
                    "taxonomy_id": "02958343",
                    "taxonomy_name": "car",
                    "train": ["pix2voxkeras_car"],
                    "val": [],
                    "test": [],
                },
                {
                    "taxonomy_id": "04530566",
                    "taxonomy_name": "boat",
                    "train": [],
                    "val": ["pix2voxkeras_watercraft"],
                    "test": ["pix2voxkeras_watercraft"],
                },
            ]
        )
    )
    src = ShapeNetSource(os.fspath(sample_root(shared_data)), taxonomy=os.fspath(tax))
    with pytest.raises(DataError) as err:
        src.records(ErrorPolicy("skip"))  # not a per-sample fault: refused even when skipping bad samples
    msg = str(err.value)
    assert msg.startswith(f"{tax}: ")
    assert "03001627/pix2voxkeras_chair (train, test)" in msg and "04530566/pix2voxkeras_watercraft (val, test)" in msg
    assert "pix2voxkeras_car" not in msg


# --- ManifestSource -------------------------------------------------------------------------------


def write_manifest(tmp_path: Path, rows: list[str], header: str) -> Path:
    path = tmp_path / "manifest" / "data.csv"
    path.parent.mkdir()
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def test_manifest_with_real_mat_voxels_and_photos(shared_data, tmp_path):
    base = tmp_path / "manifest"
    mats = sorted((shared_data / "mat").glob("*.mat"))
    photos = [shared_data / "photos" / f"{i}.png" for i in range(3)]
    r = lambda p: rel(p, base)  # noqa: E731  paths relative to the CSV's folder
    rows = [
        f"{r(photos[0])};{r(photos[1])},{r(mats[0])},chair,armchair,train",
        f"{r(photos[2])},{r(mats[0])},chair,armchair,train",  # another row of the same object
        f"{r(photos[2])},{r(mats[1])},chair,,val",  # no object_id: the voxel file identifies it
        f"{photos[0]},{mats[2]},sofa,,",  # absolute paths, no split
    ]
    path = write_manifest(tmp_path, rows, "image,voxels,category,object_id,split")
    src = ManifestSource(os.fspath(path))
    src.prepare({})
    records = src.records(ErrorPolicy("raise"))
    assert len(records) == 3
    by_id = {rec.object_id: rec for rec in records}
    arm = by_id["armchair"]
    assert [Path(p).resolve() for p in arm.images] == [p.resolve() for p in photos]
    assert Path(arm.voxels).resolve() == mats[0].resolve() and arm.split == "train" and arm.category == "chair"
    # no object_id: named by the resolved voxel file (outside the CSV's folder: its absolute path)
    second = by_id[os.path.realpath(mats[1])]
    assert second.split == "val" and len(second.images) == 1
    third = by_id[os.path.realpath(mats[2])]
    assert third.split is None and third.category == "sofa"
    # split version 1 (runs saved before data.split_version): the path as written, joined to the folder
    src.split_version = 1
    assert {rec.object_id for rec in src.records(ErrorPolicy("raise"))} == {
        "armchair",
        os.fspath(base / r(mats[1])),
        os.fspath(mats[2]),
    }
    src.split_version = 2
    # every path the source yields is readable as real data
    for rec in records:
        grid = load_voxels(rec.voxels, src.voxel_key)
        assert grid.shape == (32, 32, 32) and grid.any()
        for img in rec.images:
            assert read_rgba(img, 127).shape == (127, 127, 4)
    # the keyed variant reads the same arrays
    keyed = ManifestSource(os.fspath(path), voxel_key="instance")
    assert keyed.records(ErrorPolicy("raise")) == records
    np.testing.assert_array_equal(load_voxels(arm.voxels, keyed.voxel_key), load_voxels(mats[0]))
    raw = scipy.io.loadmat(mats[0])["instance"]
    assert load_voxels(arm.voxels).sum() >= raw.sum()


def test_manifest_root_overrides_the_csv_folder(shared_data, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "image,voxels,category\nphotos/0.png,mat/"
        + sorted(p.name for p in (shared_data / "mat").glob("*.mat"))[0]
        + ",chair\n"
    )
    (rec,) = ManifestSource(os.fspath(path), root=os.fspath(shared_data)).records(ErrorPolicy("raise"))
    assert Path(rec.images[0]) == shared_data / "photos" / "0.png"
    assert Path(rec.voxels).parent == shared_data / "mat" and Path(rec.voxels).is_file()


def _spellings_manifest(shared_data: Path, folder: Path) -> tuple[Path, list[Path]]:
    """A manifest in ``folder`` naming one real binvox file (copied to ``x/model.binvox``) four ways:
    ``x/../x/model.binvox``, ``x/model.binvox``, ``./x//model.binvox`` and through a symlinked
    folder; 5 real views (one listed twice, by two spellings) and a second object. No object_id,
    no split column."""
    views = sorted((shared_data / "r2n2-sample" / "ShapeNetRendering" / "03001627").glob("*/rendering/0[0-4].png"))
    binvox = sorted((shared_data / "binvox").glob("*.binvox"))
    (folder / "x").mkdir(parents=True)
    (folder / "y").mkdir()
    shutil.copyfile(binvox[0], folder / "x" / "model.binvox")
    shutil.copyfile(binvox[1], folder / "y" / "model.binvox")
    (folder / "linked").symlink_to("x", target_is_directory=True)
    for i, v in enumerate(views):
        shutil.copyfile(v, folder / "x" / f"{i}.png")
    rows = [
        "image,voxels,category",
        "x/0.png;x/1.png,x/../x/model.binvox,chair",
        "x/2.png,x/model.binvox,chair",
        "x/3.png;linked/1.png,./x//model.binvox,chair",  # linked/1.png is x/1.png again
        f"x/4.png,{folder / 'linked' / 'model.binvox'},chair",
        "x/0.png,y/model.binvox,chair",
    ]
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, views


def test_manifest_names_an_object_by_its_resolved_voxel_file(shared_data, tmp_path):
    """``x/../x/model.binvox`` and ``x/model.binvox`` were two objects (one could be in train, the
    other in test); now every spelling of one voxel file is one object, its views deduplicated by
    their resolved files, its id the resolved path relative to the CSV's folder (kept when the
    folder moves)."""
    path, _ = _spellings_manifest(shared_data, tmp_path / "data")
    records = ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    assert [r.object_id for r in records] == ["x/model.binvox", "y/model.binvox"]
    one = records[0]
    assert [os.path.relpath(os.path.realpath(p), path.parent) for p in one.images] == [f"x/{i}.png" for i in range(5)]
    assert load_voxels(one.voxels).shape == (32, 32, 32) and all(read_rgba(p, 127).any() for p in one.images)
    # split version 1 keeps the earlier identity for runs saved with it: the path joined to the folder
    # (pathlib drops "./" and "//", not ".."), so three objects of one file
    old = ManifestSource(os.fspath(path))
    old.split_version = 1
    assert [r.object_id for r in old.records(ErrorPolicy("raise"))] == [
        os.fspath(path.parent / p)
        for p in ("x/../x/model.binvox", "x/model.binvox", "linked/model.binvox", "y/model.binvox")
    ]
    # a moved data folder keeps its ids (and so its split); the absolute spelling is left behind
    moved = (tmp_path / "data").rename(tmp_path / "elsewhere")
    rows = (moved / "manifest.csv").read_text().splitlines()
    (moved / "manifest.csv").write_text("\n".join(r for r in rows if str(tmp_path) not in r) + "\n")
    assert [r.object_id for r in ManifestSource(os.fspath(moved / "manifest.csv")).records(ErrorPolicy("raise"))] == [
        "x/model.binvox",
        "y/model.binvox",
    ]


def test_manifest_object_id_rows_may_spell_their_voxel_file_differently(shared_data, tmp_path):
    path, _ = _spellings_manifest(shared_data, tmp_path)
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0] + ",object_id"] + [r + ",obj" for r in rows[1:5]]) + "\n")
    [rec] = ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    assert rec.object_id == "obj" and len(rec.images) == 5
    old = ManifestSource(os.fspath(path))
    old.split_version = 1  # there the same id with another voxel spelling was refused as a conflict
    with pytest.raises(DataError, match="given different voxels"):
        old.records(ErrorPolicy("raise"))


def test_a_datamodule_splits_a_twice_listed_voxel_file_as_one_object(shared_data, tmp_path):
    """Through data=manifest (split version 2): the spellings are one object in one split."""
    from r2n2.data.datamodule import R2N2DataModule

    path, _ = _spellings_manifest(shared_data, tmp_path / "data")
    for seed in range(6):
        dm = R2N2DataModule(
            ManifestSource(os.fspath(path)),
            seed=seed,
            split_version=2,
            pack_workers=0,
            cache_dir=os.fspath(tmp_path / "cache"),
        )
        ids = [r.object_id for p in dm._plans().values() for r in p.objects]
        assert sorted(ids) == ["x/model.binvox", "y/model.binvox"], seed


@pytest.mark.parametrize(
    "header, missing", [("image,category", "voxels"), ("voxels,category,split", "image"), ("image,voxels", "category")]
)
def test_manifest_missing_column_names_the_csv(tmp_path, header, missing):
    path = tmp_path / "m.csv"
    path.write_text(header + "\n" + ",".join(["x"] * len(header.split(","))) + "\n")
    with pytest.raises(DataError) as err:
        ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{path}: ") and repr(missing) in str(err.value)


def test_manifest_bad_rows(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,voxels,category,split\na.png,a.npy,chair,train\n,b.npy,chair,\nc.png,c.npy,chair,holdout\n")
    with pytest.raises(DataError) as err:
        ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{path}: line 3")
    errors = ErrorPolicy("skip")
    records = ManifestSource(os.fspath(path)).records(errors)
    assert [Path(r.voxels).name for r in records] == ["a.npy"]
    assert [s["fault"].split(":")[0] for s in errors.skipped] == ["line 3", "line 4"]


def test_manifest_not_found(tmp_path):
    path = tmp_path / "none.csv"
    for call in (lambda s: s.prepare({}), lambda s: s.records(ErrorPolicy("raise"))):
        with pytest.raises(DataError) as err:
            call(ManifestSource(os.fspath(path)))
        assert str(err.value).startswith(f"{path}: ")


# --- splits ---------------------------------------------------------------------------------------


def fake_records(n_per_category: dict[str, int], views: int = 3) -> list[ObjectRecord]:
    return [
        ObjectRecord(f"{cat}/{i:03d}", cat, tuple(f"{cat}/{i}/{v}.png" for v in range(views)), f"{cat}/{i}.npy")
        for cat, n in n_per_category.items()
        for i in range(n)
    ]


FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def ids(split: dict[str, list[ObjectRecord]]) -> dict[str, list[str]]:
    return {s: [r.object_id for r in v] for s, v in split.items()}


def test_splits_are_by_object_deterministic_and_seeded():
    records = fake_records({"chair": 40, "car": 25, "lamp": 7})
    a, b, c = (assign_splits(records, FRACTIONS, seed) for seed in (0, 0, 1))
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    for split in (a, c):
        all_ids = [oid for v in ids(split).values() for oid in v]
        assert len(all_ids) == len(set(all_ids)) == len(records)  # each object in exactly one split
        counts = {s: len(v) for s, v in split.items()}
        assert counts["train"] == pytest.approx(0.7 * 72, abs=2) and counts["test"] == pytest.approx(0.2 * 72, abs=2)
        # stratified: every category is in the training split
        assert {r.category for r in split["train"]} == {"chair", "car", "lamp"}
    # the order of the input does not matter
    shuffled = [records[i] for i in np.random.default_rng(5).permutation(len(records))]
    assert ids(assign_splits(shuffled, FRACTIONS, 0)) == ids(a)


def test_select_samples():
    objects = fake_records({"chair": 4}, views=5)  # 20 (object, view) pairs
    everything = select_samples(objects, None, 0, "train")
    assert everything == [(o, v) for o in range(4) for v in range(5)]
    pick = select_samples(objects, 7, 0, "train")
    assert len(pick) == len(set(pick)) == 7 and set(pick) <= set(everything) and pick == sorted(pick)
    assert select_samples(objects, 7, 0, "train") == pick
    assert select_samples(objects, 20, 3, "val") == everything
    assert any(select_samples(objects, 7, s, "train") != pick for s in (1, 2, 3))
    with pytest.raises(ValueError, match=r"asks for more samples than the val split has: 20 "):
        select_samples(objects, 21, 0, "val")


def test_error_policy(tmp_path):
    with pytest.raises(ValueError):
        ErrorPolicy("ignore")
    err = DataError(tmp_path / "x.png", "corrupt")
    with pytest.raises(DataError):
        ErrorPolicy("raise").handle(err)
    policy = ErrorPolicy("skip")
    policy.handle(err)
    policy.write(tmp_path / "skipped.json", "test")
    assert json.loads((tmp_path / "skipped.json").read_text()) == [
        {"path": os.fspath(tmp_path / "x.png"), "fault": "corrupt"}
    ]

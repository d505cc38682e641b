"""The packed split cache: contents equal direct reading, reuse, invalidation, corruption, bad inputs,
and its size against the PNGs it was packed from.

The cache format is read here directly from its documented layout (images.z of zlib streams located by
images.npy, voxels.u8 bit-packed, samples.npy, index.json) and compared with reading the source files
one by one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2n2.data.cache import CacheInvalid, CorruptImage, Plan, ensure_packed, read_index
from r2n2.data.dataset import PackedDataset
from r2n2.data.errors import DataError
from r2n2.data.formats import load_voxels, read_rgba
from r2n2.data.sources import ErrorPolicy, ShapeNetSource

CONFIG = {"image_size": 127, "resolution": 32, "voxel_key": None}
OBJECTS = ("03001627/pix2voxkeras_chair", "02958343/pix2voxkeras_car", "03636649/pix2voxkeras_lamp")


def copy_sample(shared: Path, dest: Path, objects=OBJECTS, views: int = 3) -> Path:
    """Copy a few objects of the real sample (the first ``views`` views) into ``dest``, to modify."""
    src = shared / "r2n2-sample"
    for oid in objects:
        r_from, r_to = src / "ShapeNetRendering" / oid / "rendering", dest / "ShapeNetRendering" / oid / "rendering"
        r_to.mkdir(parents=True)
        names = [f"{v:02d}.png" for v in range(views)]
        for n in names:
            shutil.copyfile(r_from / n, r_to / n)
        (r_to / "renderings.txt").write_text("\n".join(names) + "\n")
        (dest / "ShapeNetVox32" / oid).mkdir(parents=True)
        shutil.copyfile(src / "ShapeNetVox32" / oid / "model.binvox", dest / "ShapeNetVox32" / oid / "model.binvox")
    return dest


def plan_for(root: Path, samples=None, all_views: bool = False, errors: ErrorPolicy | None = None) -> tuple[Plan, dict]:
    """Plan over the objects of ``root`` (every (object, view) pair unless ``samples`` is given), and
    its identity for ``ensure_packed`` (the source, its fingerprint and the planned samples)."""
    src = ShapeNetSource(os.fspath(root))
    records = [r for r in src.records(errors or ErrorPolicy("raise")) if r.object_id in OBJECTS]
    if samples is None:
        samples = [(o, v) for o, r in enumerate(records) for v in range(len(r.images))]
    plan = Plan.make(records, samples, all_views)
    return plan, {"source": src.describe(), "fingerprint": src.fingerprint(), "samples": np.asarray(samples).tolist()}


def read_cache(folder: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(index, images (N, S, S, 4) uint8, voxels (M, R, R, R) bool) from the documented layout."""
    index = json.loads((folder / "index.json").read_text())
    s, r = index["image_size"], index["resolution"]
    data, table = (folder / "images.z").read_bytes(), np.load(folder / "images.npy")
    assert table.shape == (index["num_images"] + 1, 2) and table[-1, 0] == len(data)
    blobs = [data[a:b] for a, b in zip(table[:-1, 0], table[1:, 0])]
    assert [zlib.crc32(b) for b in blobs] == table[:-1, 1].tolist()
    images = (
        np.stack([np.frombuffer(zlib.decompress(b), np.uint8) for b in blobs]).reshape(-1, s, s, 4)
        if blobs
        else np.zeros((0, s, s, 4), np.uint8)
    )
    bits = np.fromfile(folder / "voxels.u8", np.uint8).reshape(len(index["objects"]), -1)
    voxels = np.unpackbits(bits, axis=1)[:, : r**3].reshape(-1, r, r, r).astype(bool)
    index["samples"] = np.load(folder / "samples.npy").tolist()
    return index, images, voxels


def assert_cache_matches_direct_reading(folder: Path, plan: Plan, size: int = 127, skipped=()) -> None:
    """Every planned sample (not in ``skipped`` paths) is in the cache, in order, exactly as read."""
    index, images, voxels = read_cache(folder)
    wanted = [
        (o, v)
        for o, v in plan.samples
        if plan.objects[o].images[v] not in skipped and plan.objects[o].voxels not in skipped
    ]
    assert len(index["samples"]) == len(wanted)
    assert images.shape[0] == index["num_images"]
    for (o, v), (slot_obj, slot) in zip(wanted, index["samples"]):
        rec, entry = plan.objects[o], index["objects"][slot_obj]
        assert entry["id"] == rec.object_id and entry["category"] == rec.category
        assert slot < entry["count"]
        np.testing.assert_array_equal(images[entry["first"] + slot], read_rgba(rec.images[v], size))
        np.testing.assert_array_equal(voxels[slot_obj], load_voxels(rec.voxels))


# --- contents -------------------------------------------------------------------------------------


def test_packed_split_holds_exactly_what_direct_reading_gives(shared_data, tmp_path):
    root = shared_data / "r2n2-sample"  # read in place; the cache goes to tmp_path
    plan, source = plan_for(root, samples=[(0, 0), (0, 5), (1, 23), (2, 3), (2, 4), (2, 17)])
    folder = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("train-")
    assert_cache_matches_direct_reading(folder, plan)
    index = read_index(folder)
    assert index["num_images"] == 6  # single-view: only the sampled views are stored
    assert [o["views"] for o in index["objects"]] == [24, 24, 24]  # each object's views in the source
    assert not (folder / "skipped.json").exists()
    # the dataset serves the same: the sample's own view and its voxels
    ds = PackedDataset(folder, views=1, categories=["car", "chair", "lamp"])
    assert len(ds) == 6
    for i, (o, v) in enumerate(plan.samples):
        item = ds[i]
        rec = plan.objects[o]
        np.testing.assert_array_equal(item["rgba"], read_rgba(rec.images[v], 127)[None])
        np.testing.assert_array_equal(item["voxels"], load_voxels(rec.voxels).astype(np.uint8))
        assert item["object_id"] == rec.object_id and item["category"] == rec.category
        assert ["car", "chair", "lamp"][item["category_index"]] == rec.category


def test_multi_view_plan_stores_every_view(shared_data, tmp_path):
    root = copy_sample(shared_data, tmp_path / "src", views=4)
    plan, source = plan_for(root, samples=[(0, 1), (2, 3)], all_views=True)
    folder = ensure_packed(
        tmp_path / "cache", "val", source, plan, {**CONFIG, "all_views": True}, ErrorPolicy("raise"), workers=2
    )
    index, images, _ = read_cache(folder)
    assert index["num_images"] == 8 and [o["count"] for o in index["objects"]] == [4, 4]
    assert PackedDataset(folder, views=3, categories=["car", "chair", "lamp"]).min_views() == 4
    for entry, rec in zip(index["objects"], plan.objects):
        for v in range(4):
            np.testing.assert_array_equal(images[entry["first"] + v], read_rgba(rec.images[v], 127))
    assert_cache_matches_direct_reading(folder, plan)


# --- reuse and invalidation -----------------------------------------------------------------------


def stamps(folder: Path) -> list[tuple[int, int]]:
    return [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (folder, folder / "index.json", folder / "images.z")]


def test_second_ensure_packed_reuses_the_cache(shared_data, tmp_path):
    root = copy_sample(shared_data, tmp_path / "src")
    plan, source = plan_for(root)
    folder = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    before = stamps(folder)
    again = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert again == folder and stamps(again) == before
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [folder.name]


def test_changed_config_gets_a_new_cache(shared_data, tmp_path):
    root = copy_sample(shared_data, tmp_path / "src")
    plan, source = plan_for(root)
    a = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    b = ensure_packed(tmp_path / "cache", "train", source, plan, {**CONFIG, "image_size": 64}, ErrorPolicy("raise"))
    c = ensure_packed(tmp_path / "cache", "train", {**source, "seed": 1}, plan, CONFIG, ErrorPolicy("raise"))
    assert len({a, b, c}) == 3
    assert read_index(b)["image_size"] == 64
    assert_cache_matches_direct_reading(b, plan, size=64)
    d = ensure_packed(tmp_path / "cache", "val", source, plan, CONFIG, ErrorPolicy("raise"))
    assert d.name.startswith("val-") and d.name[4:] != a.name[6:]


def replace(path: Path, data: bytes) -> None:
    """Write ``path`` anew as archives and most tools do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_changed_source_file_gets_a_new_cache(shared_data, tmp_path):
    root = copy_sample(shared_data, tmp_path / "src")
    plan, source = plan_for(root)
    old = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    png = Path(plan.objects[1].images[2])
    with Image.open(png) as im:
        im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "flipped.png")
    replace(png, (tmp_path / "flipped.png").read_bytes())  # one view rewritten
    plan, source = plan_for(root)  # what a later run sees: the source's fingerprint
    new = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert new != old
    assert_cache_matches_direct_reading(new, plan)
    _, images, _ = read_cache(new)
    _, old_images, _ = read_cache(old)
    changed = [i for i in range(len(images)) if not np.array_equal(images[i], old_images[i])]
    assert len(changed) == 1  # exactly the rewritten view differs
    # a voxel file replaced by the same bytes counts as changed too
    vox = Path(plan.objects[0].voxels)
    replace(vox, vox.read_bytes())
    plan, source = plan_for(root)
    newer = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert newer not in (old, new)


def test_the_fingerprint_reads_folders_and_follows_every_listed_object(shared_data, tmp_path):
    """ShapeNet's fingerprint stats each object's two folders, not its files: an object or a view
    added, removed or replaced changes it; reading the data leaves it alone."""
    root = copy_sample(shared_data, tmp_path / "src")
    src = ShapeNetSource(os.fspath(root))
    first = src.fingerprint()
    src.records(ErrorPolicy("raise"))
    assert src.fingerprint() == first
    view = root / "ShapeNetRendering" / OBJECTS[2] / "rendering" / "00.png"
    view.unlink()
    second = src.fingerprint()
    assert second != first
    (root / "ShapeNetVox32" / OBJECTS[0] / "model.binvox").rename(root / "ShapeNetVox32" / OBJECTS[0] / "old.binvox")
    assert src.fingerprint() not in (first, second)
    shutil.rmtree(root / "ShapeNetRendering" / OBJECTS[1])
    assert (
        ShapeNetSource(os.fspath(root), categories=["lamp", "chair"]).fingerprint()
        != ShapeNetSource(os.fspath(root), categories=["lamp"]).fingerprint()
    )


# --- corrupt, truncated and partial caches --------------------------------------------------------


def flip_bytes(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


DAMAGE = {  # found when the cache is opened (a flipped image is found when it is read: below)
    "flipped-voxels": (lambda f: flip_bytes(f / "voxels.u8", 7), "CRC"),
    "flipped-image-table": (lambda f: flip_bytes(f / "images.npy", 140), "CRC"),
    "flipped-samples": (lambda f: flip_bytes(f / "samples.npy", 140), "CRC"),
    "truncated-images": (lambda f: truncate(f / "images.z"), "truncated"),
    "missing-voxels": (lambda f: (f / "voxels.u8").unlink(), "missing"),
    "no-index": (lambda f: (f / "index.json").unlink(), "no index.json"),
    "garbage-index": (lambda f: (f / "index.json").write_bytes(b"\x00\xff garbage \xfe"), "corrupt"),
    "cut-index": (lambda f: (f / "index.json").write_text((f / "index.json").read_text()[:50]), "corrupt"),
    "empty-index": (lambda f: (f / "index.json").write_text("{}"), "version"),
    "list-index": (lambda f: (f / "index.json").write_text("[1, 2]"), "corrupt"),
    "index-missing-fields": (
        lambda f: (f / "index.json").write_text(
            json.dumps({"version": json.loads((f / "index.json").read_text())["version"]})
        ),
        "corrupt",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_detected_and_rebuilt(shared_data, tmp_path, damage):
    root = copy_sample(shared_data, tmp_path / "src", objects=OBJECTS[:2], views=2)
    plan, source = plan_for(root)
    folder = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    read_index(folder)
    harm, words = DAMAGE[damage]
    harm(folder)
    with pytest.raises(CacheInvalid, match=words):
        read_index(folder)
    again = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert again == folder
    read_index(folder)
    assert_cache_matches_direct_reading(folder, plan)


def test_a_corrupt_image_is_never_used_and_its_cache_is_rebuilt(shared_data, tmp_path):
    """A flipped byte inside one stored image: opening reads no image, so it passes; reading that
    image fails naming the cache and removes its index, and the next start rebuilds it. A full check
    (``verify``) finds it at opening."""
    root = copy_sample(shared_data, tmp_path / "src", objects=OBJECTS[:2], views=2)
    plan, source = plan_for(root)
    folder = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    table = np.load(folder / "images.npy")
    flip_bytes(folder / "images.z", int(table[2, 0]) + 100)  # inside image 2
    read_index(folder)
    with pytest.raises(CacheInvalid, match="image 2 of images.z fails its CRC-32"):
        read_index(folder, verify=True)
    ds = PackedDataset(folder, views=1, categories=["car", "chair"])
    good = ds.images(np.array([0, 1, 3]))  # the intact images read as packed
    np.testing.assert_array_equal(good, read_cache_images_without(folder, skip=2))
    with pytest.raises(CorruptImage) as err:
        ds.images(np.array([1, 2]))
    assert str(err.value).startswith(f"{folder}: image 2 of the cache is corrupt")
    assert not (folder / "index.json").exists()  # invalidated: never used again
    again = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert again == folder
    assert_cache_matches_direct_reading(folder, plan)


def read_cache_images_without(folder: Path, skip: int) -> np.ndarray:
    """The images of ``folder`` but ``skip``, decoded straight from images.z (no checks)."""
    s = json.loads((folder / "index.json").read_text())["image_size"]
    data, table = (folder / "images.z").read_bytes(), np.load(folder / "images.npy")
    return np.stack(
        [
            np.frombuffer(zlib.decompress(data[table[i, 0] : table[i + 1, 0]]), np.uint8).reshape(s, s, 4)
            for i in range(len(table) - 1)
            if i != skip
        ]
    )


def test_the_cache_is_within_twice_the_pngs_it_was_packed_from(shared_data, tmp_path):
    """Issue 24: the cache of every view of the 7 real objects against their PNGs' bytes."""
    root = shared_data / "r2n2-sample"
    src = ShapeNetSource(os.fspath(root))
    records = src.records(ErrorPolicy("raise"))
    samples = [(o, v) for o, r in enumerate(records) for v in range(len(r.images))]
    folder = ensure_packed(
        tmp_path / "cache",
        "train",
        {"source": src.describe()},
        Plan.make(records, samples, False),
        CONFIG,
        ErrorPolicy("raise"),
    )
    pngs = sum(os.path.getsize(p) for r in records for p in r.images)
    cache = sum(p.stat().st_size for p in folder.iterdir())
    assert len(samples) == 168 and cache <= 2 * pngs, (cache, pngs)


def test_packing_names_the_unused_caches_of_an_older_version(shared_data, tmp_path, caplog):
    old = tmp_path / "cache" / "train-0123456789abcdef0123"
    old.mkdir(parents=True)
    (old / "images.u8").write_bytes(b"\0" * 5000)
    (old / "index.json").write_text(json.dumps({"version": 1}))
    root = copy_sample(shared_data, tmp_path / "src", objects=OBJECTS[:1], views=2)
    plan, source = plan_for(root)
    with caplog.at_level(logging.WARNING, logger="r2n2.data.cache"):
        folder = ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert f"{tmp_path / 'cache'} holds 1 cache folder(s) of an older version" in caplog.text
    assert old.name in caplog.text and folder.name not in caplog.text
    assert old.is_dir()  # named, never deleted: another checkout may still read it


def test_leftover_temporary_folder_of_a_killed_run_is_ignored(shared_data, tmp_path):
    root = copy_sample(shared_data, tmp_path / "src", objects=OBJECTS[:1], views=2)
    plan, source = plan_for(root)
    cache = tmp_path / "cache"
    folder = ensure_packed(cache, "train", source, plan, CONFIG, ErrorPolicy("raise"))
    shutil.rmtree(folder)
    half = cache / f".{folder.name}.abc.tmp"  # what pack() was writing when it was killed
    half.mkdir()
    (half / "images.z").write_bytes(b"\0" * 1000)
    assert ensure_packed(cache, "train", source, plan, CONFIG, ErrorPolicy("raise")) == folder
    assert_cache_matches_direct_reading(folder, plan)


# --- bad inputs: skip or raise --------------------------------------------------------------------


def break_png(root: Path) -> str:
    png = root / "ShapeNetRendering" / OBJECTS[0] / "rendering" / "01.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    return os.fspath(png)


def drop_voxels(root: Path) -> str:
    vox = root / "ShapeNetVox32" / OBJECTS[1] / "model.binvox"
    vox.unlink()
    return os.fspath(vox)


def bad_binvox(root: Path) -> str:
    vox = root / "ShapeNetVox32" / OBJECTS[2] / "model.binvox"
    vox.write_bytes(b"#binvox 1\ndim 32 32 32\ntranslate 0 0 0\nscale 1\ndata\n\x01\xff\x00\x10")
    return os.fspath(vox)


FAULTS = {"bad-png": break_png, "missing-voxels": drop_voxels, "bad-binvox": bad_binvox}


def test_on_error_skip_skips_exactly_the_bad_samples(shared_data, tmp_path, caplog):
    root = copy_sample(shared_data, tmp_path / "src", objects=OBJECTS + ("02691156/pix2voxkeras_airplane",))
    bad = [make(root) for make in FAULTS.values()]
    src = ShapeNetSource(os.fspath(root))
    records = src.records(ErrorPolicy("raise"))
    assert len(records) == 4
    samples = [(o, v) for o, r in enumerate(records) for v in range(3)]
    plan = Plan.make(records, samples, all_views=False)
    errors = ErrorPolicy("skip")
    with caplog.at_level(logging.WARNING):
        folder = ensure_packed(
            tmp_path / "cache",
            "train",
            {"source": src.describe()},
            plan,
            {**CONFIG, "on_error": "skip"},
            errors,
            workers=2,
        )
    skipped = json.loads((folder / "skipped.json").read_text())
    assert sorted(s["path"] for s in skipped) == sorted(bad)
    assert all(s["fault"] for s in skipped)
    # 3 bad files, but 7 samples lost: the bad view, and all 3 views of each object whose voxels are bad
    assert "skipped 3 bad file(s): 7 samples dropped" in caplog.text
    # the warning points to the list where it is now, not to the temporary folder it was written in
    assert f"(list in {folder / 'skipped.json'})" in caplog.text and ".tmp" not in caplog.text
    # 12 planned samples: the bad view (1), and every view of the two objects with bad voxels (3 + 3)
    index = read_index(folder)
    assert index["num_samples"] == len(np.load(folder / "samples.npy")) == 12 - 1 - 3 - 3
    good = {OBJECTS[0], "02691156/pix2voxkeras_airplane"}
    assert [o["id"] for o in index["objects"]] == [r.object_id for r in plan.objects if r.object_id in good]
    assert_cache_matches_direct_reading(folder, plan, skipped=bad)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="r2n2.data.dataset"):
        ds = PackedDataset(folder, views=1, categories=sorted({r.category for r in records}))
    assert len(ds) == 5
    assert "3 bad file(s) were skipped" in caplog.text


@pytest.mark.parametrize("fault", list(FAULTS))
def test_on_error_raise_names_the_bad_file(shared_data, tmp_path, fault):
    root = copy_sample(shared_data, tmp_path / "src")
    bad = FAULTS[fault](root)
    plan, source = plan_for(root)
    with pytest.raises(DataError) as err:
        ensure_packed(tmp_path / "cache", "train", source, plan, CONFIG, ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{bad}: ")
    # nothing half-built is left behind
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_a_listing_without_faults_removes_the_earlier_list(tmp_path):
    """skipped-records.json lists the last listing's faults: once the data is fixed it goes away,
    rather than naming files that are no longer bad."""
    listed = tmp_path / "skipped-records.json"
    before = ErrorPolicy("skip")
    before.handle(DataError(tmp_path / "a.binvox", "truncated"))
    before.write(listed, "dataset listing")
    assert json.loads(listed.read_text()) == [{"path": str(tmp_path / "a.binvox"), "fault": "truncated"}]
    ErrorPolicy("skip").write(listed, "dataset listing")
    assert not listed.exists()

"""R2N2DataModule on the real 7-object sample: batch format, exact preprocessing, multi-view samples,
augmentation, split sizes, worker processes, and Hydra instantiation.

Expected images come from a hand pipeline written here: read_rgba(path, 127) -> composite on 240 ->
/255 -> ImageNet mean/std (REFERENCE.md). A batch image is identified by matching it against the
hand-preprocessed views of its object, so no test depends on the order in which the cache stores them.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch

from r2n2.data.datamodule import R2N2DataModule
from r2n2.data.formats import load_voxels, read_rgba
from r2n2.data.sources import ShapeNetSource
from r2n2.data.transforms import to_images

MEAN = np.array([0.485, 0.456, 0.406])  # REFERENCE.md: ImageNet statistics
STD = np.array([0.229, 0.224, 0.225])
CATEGORIES = sorted(["airplane", "bench", "car", "chair", "lamp", "rifle", "watercraft"])
FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}
VIEWS = 24


@pytest.fixture(scope="module")
def root(shared_data) -> Path:
    return shared_data / "r2n2-sample"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # shared by the module's datamodules: equal configs reuse it


def make_dm(root: Path, cache_dir: Path, **kwargs) -> R2N2DataModule:
    args = dict(split_fractions=FRACTIONS, seed=0, batch_size=4, pack_workers=0, cache_dir=os.fspath(cache_dir))
    dm = R2N2DataModule(ShapeNetSource(os.fspath(root)), **{**args, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm(root, cache_dir) -> R2N2DataModule:
    return make_dm(root, cache_dir)


@functools.cache
def hand_views(root: Path, object_id: str) -> np.ndarray:
    """All views of an object through the hand pipeline: (24, 3, 127, 127) float64."""
    out = []
    for v in range(VIEWS):
        rgba = read_rgba(root / "ShapeNetRendering" / object_id / "rendering" / f"{v:02d}.png", 127).astype(np.float64)
        alpha = rgba[..., 3:] / 255
        rgb = rgba[..., :3] * alpha + 240 * (1 - alpha)
        out.append(((rgb / 255 - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out)


@functools.cache
def raw_views(root: Path, object_id: str) -> dict[bytes, int]:
    """RGBA bytes (as read_rgba(path, 127) gives them) -> view index, for one object."""
    table = {
        read_rgba(root / "ShapeNetRendering" / object_id / "rendering" / f"{v:02d}.png", 127).tobytes(): v
        for v in range(VIEWS)
    }
    assert len(table) == VIEWS  # the 24 views are all different images
    return table


def which_view(root: Path, object_id: str, image: torch.Tensor, atol: float = 1e-4) -> int | None:
    """The view of ``object_id`` whose hand-preprocessed image equals ``image`` (3, 127, 127), or None."""
    err = np.abs(hand_views(root, object_id) - image.double().numpy()).reshape(VIEWS, -1).max(1)
    hits = np.flatnonzero(err < atol)
    assert len(hits) <= 1
    return int(hits[0]) if len(hits) else None


def images(batch: dict) -> torch.Tensor:
    """The batch's images as the module makes them on the device, without augmentation."""
    return to_images(batch["rgba"])


def split_ids(dm: R2N2DataModule) -> dict[str, set[str]]:
    return {s: {o["id"] for o in d.objects} for s, d in dm.datasets.items()}


# --- batches --------------------------------------------------------------------------------------


def test_batch_format(dm, root):
    assert dm.categories == CATEGORIES
    for split, loader in (
        ("train", dm.train_dataloader()),
        ("val", dm.val_dataloader()),
        ("test", dm.test_dataloader()),
    ):
        batch = next(iter(loader))
        keys = {"rgba", "voxels", "category", "category_index", "object_id"}
        assert set(batch) == keys | ({"seed"} if split == "train" else set())  # seed: training batches only
        b = len(batch["object_id"])
        assert b == 4
        assert batch["rgba"].shape == (b, 1, 127, 127, 4) and batch["rgba"].dtype == torch.uint8
        assert images(batch).shape == (b, 1, 3, 127, 127) and images(batch).dtype == torch.float32
        assert batch["voxels"].shape == (b, 32, 32, 32) and batch["voxels"].dtype == torch.uint8
        assert set(batch["voxels"].unique().tolist()) == {0, 1}
        assert isinstance(batch["category"], list) and all(isinstance(c, str) for c in batch["category"])
        assert batch["category_index"].shape == (b,) and not batch["category_index"].is_floating_point()
        for i, oid in enumerate(batch["object_id"]):
            synset, _ = oid.split("/")
            assert (
                batch["category"][i]
                == {
                    "02691156": "airplane",
                    "02828884": "bench",
                    "02958343": "car",
                    "03001627": "chair",
                    "03636649": "lamp",
                    "04090263": "rifle",
                    "04530566": "watercraft",
                }[synset]
            )
            assert CATEGORIES[int(batch["category_index"][i])] == batch["category"][i]
            expected = load_voxels(root / "ShapeNetVox32" / oid / "model.binvox")
            np.testing.assert_array_equal(batch["voxels"][i].numpy(), expected.astype(np.uint8))


def test_preprocessing_is_exactly_resize_composite_scale_normalise(dm, root):
    """Every val image equals the hand pipeline on one view of its object, and the val split (all
    samples of its objects) shows each view exactly once."""
    seen = []
    for batch in dm.val_dataloader():
        for oid, img in zip(batch["object_id"], images(batch)[:, 0]):
            view = which_view(root, oid, img)
            assert view is not None, f"a val image of {oid} is not the preprocessed view of any file"
            seen.append((oid, view))
    assert len(seen) == len(set(seen)) == VIEWS * len(split_ids(dm)["val"])


def test_splits_are_by_object_and_cover_the_sample(dm):
    ids = split_ids(dm)
    assert all(ids[s] for s in ("train", "val", "test"))
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == 7
    assert {s: len(d) for s, d in dm.datasets.items()} == {s: VIEWS * len(ids[s]) for s in ids}


def test_split_sizes_in_samples(root, cache_dir):
    dm = make_dm(root, cache_dir, splits={"train": 10, "val": 5, "test": 7})
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 10, "val": 5, "test": 7}
    # the sampled objects are still only from their split
    full = make_dm(root, cache_dir)
    for s, ids in split_ids(dm).items():
        assert ids <= split_ids(full)[s]


def test_asking_more_samples_than_exist_fails_with_the_count(dm, root, cache_dir):
    have = VIEWS * len(split_ids(dm)["train"])
    with pytest.raises(ValueError, match=rf"has: {have} \("):
        make_dm(root, cache_dir, splits={"train": have + 1})
    with pytest.raises(ValueError, match=rf"has: {VIEWS * len(split_ids(dm)['val'])} \("):
        make_dm(root, cache_dir, splits={"val": 10**6})


# --- multi-view -----------------------------------------------------------------------------------


def test_three_views_per_sample_are_distinct_views_of_the_same_object(root, cache_dir, dm):
    single = dm.datasets["train"]  # the same samples, one view each: the sample's own view
    dm = make_dm(root, cache_dir, views_per_sample=3)
    ds = dm.datasets["train"]
    assert len(ds) == len(single)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["rgba"][0], single[i]["rgba"][0])
    firsts = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["rgba"].shape == (3, 127, 127, 4)
        table = raw_views(root, item["object_id"])
        views = [table.get(img.tobytes()) for img in item["rgba"]]
        assert None not in views, "a view that is not one of the object's own"
        assert len(set(views)) == 3
        firsts.append((item["object_id"], views[0]))
    # the first view is the sample's own: across the split each (object, view) is first exactly once
    assert len(firsts) == len(set(firsts)) == VIEWS * len(split_ids(dm)["train"])
    batch = next(iter(dm.train_dataloader()))
    assert images(batch).shape == (4, 3, 3, 127, 127)
    for oid, imgs in zip(batch["object_id"], images(batch)):
        views = [which_view(root, oid, img) for img in imgs]
        assert None not in views and len(set(views)) == 3
    # evaluation keeps one view unless eval_views says otherwise
    assert images(next(iter(dm.val_dataloader()))).shape[1] == 1


def test_view_count_range_varies_per_batch(root, cache_dir):
    dm = make_dm(root, cache_dir, views_per_sample=[1, 3])
    counts = []
    for batch in dm.train_dataloader():
        v = images(batch).shape[1]
        counts.append(v)
        for oid, imgs in zip(batch["object_id"], images(batch)):
            views = [which_view(root, oid, img) for img in imgs]
            assert None not in views and len(set(views)) == v
    assert set(counts) <= {1, 2, 3}
    assert len(set(counts)) > 1  # 24 batches: all the same count has probability ~3 * 3^-24


def test_eval_views_apply_to_val_and_test(root, cache_dir):
    dm = make_dm(root, cache_dir, eval_views=3)
    assert images(next(iter(dm.train_dataloader()))).shape[1] == 1
    for loader in (dm.val_dataloader, dm.test_dataloader):
        first, second = next(iter(loader())), next(iter(loader()))
        assert images(first).shape == (4, 3, 3, 127, 127)
        torch.testing.assert_close(images(first), images(second), rtol=0, atol=0)  # fixed per sample
        for oid, imgs in zip(first["object_id"], images(first)):
            views = [which_view(root, oid, img) for img in imgs]
            assert None not in views and len(set(views)) == 3
    ds = dm.datasets["val"]
    firsts = [
        (ds[i]["object_id"], raw_views(root, ds[i]["object_id"])[ds[i]["rgba"][0].tobytes()]) for i in range(len(ds))
    ]
    assert len(set(firsts)) == len(ds)


# --- augmentation ---------------------------------------------------------------------------------


def test_augment_changes_training_images_only(root, cache_dir):
    """Training batches carry the seed of their augmentation; val batches carry none, so the module
    leaves them plain."""
    dm = make_dm(root, cache_dir, augment=True)
    batch = next(iter(dm.train_dataloader()))
    aug = to_images(batch["rgba"], dm.augment, torch.Generator().manual_seed(batch["seed"]))
    assert aug.shape == (4, 1, 3, 127, 127) and torch.isfinite(aug).all()
    for oid, img in zip(batch["object_id"], aug[:, 0]):
        assert which_view(root, oid, img, atol=1e-3) is None  # not exactly any preprocessed view
    again = next(iter(dm.train_dataloader()))
    assert again["seed"] == batch["seed"]  # the seed follows from (seed, epoch, batch): repeatable
    torch.testing.assert_close(
        to_images(again["rgba"], dm.augment, torch.Generator().manual_seed(again["seed"])), aug, rtol=0, atol=0
    )
    for batch in dm.val_dataloader():
        assert "seed" not in batch
        for oid, img in zip(batch["object_id"], images(batch)[:, 0]):
            assert which_view(root, oid, img) is not None
    # with the augmentation off, training images are the plain preprocessed views
    plain = next(iter(make_dm(root, cache_dir).train_dataloader()))
    for oid, img in zip(plain["object_id"], images(plain)[:, 0]):
        assert which_view(root, oid, img) is not None


# --- workers and Hydra ----------------------------------------------------------------------------


def test_worker_processes_give_the_same_val_batches(root, cache_dir, dm):
    multi = make_dm(root, cache_dir, num_workers=2, persistent_workers=True, device_data=False)
    loader = multi.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    expected = list(dm.val_dataloader())
    for _ in range(2):  # twice: the persistent workers serve a second epoch too
        got = list(loader)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a["object_id"] == b["object_id"] and a["category"] == b["category"]
            torch.testing.assert_close(images(a), images(b), rtol=0, atol=0)
            torch.testing.assert_close(a["voxels"], b["voxels"], rtol=0, atol=0)
            torch.testing.assert_close(a["category_index"], b["category_index"], rtol=0, atol=0)


def test_order_seed_moves_the_training_order_and_keeps_the_split(root, cache_dir, dm):
    """``seed=1`` (the configs pass it as ``order_seed``) draws another batch order and view counts;
    the split (``data.seed``) and the val batches stay; None (runs saved before) means ``seed``."""

    def order(d):
        return [(tuple(b["object_id"]), images(b).shape[1]) for b in d.train_dataloader()]

    other = make_dm(root, cache_dir, order_seed=1, views_per_sample=[1, 3])
    same = make_dm(root, cache_dir, order_seed=0, views_per_sample=[1, 3])
    legacy = make_dm(root, cache_dir, views_per_sample=[1, 3])
    assert split_ids(other) == split_ids(same) == split_ids(dm)
    assert order(legacy) == order(same) != order(other)
    assert [b["object_id"] for b in other.val_dataloader()] == [b["object_id"] for b in same.val_dataloader()]


def test_run_seed_is_the_order_seed_in_the_config():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", ["seed=3"])
    assert cfg.data.order_seed == 3 and cfg.data.seed == 0


@pytest.mark.parametrize("bad", [{"eval_views": 0}, {"views_per_sample": 0}, {"views_per_sample": [3, 2]}])
def test_view_counts_below_one_are_refused_naming_the_key(root, tmp_path, bad):
    """eval_views=0 used to give every view of each object to val and test without a word."""
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=rf"data\.{key} must be"):
        R2N2DataModule(ShapeNetSource(os.fspath(root)), cache_dir=os.fspath(tmp_path), **bad)


def test_hydra_instantiate_from_a_plain_config(root, tmp_path):
    cfg = {
        "_target_": "r2n2.data.datamodule.R2N2DataModule",
        "source": {
            "_target_": "r2n2.data.sources.ShapeNetSource",
            "root": os.fspath(root),
            "categories": ["chair", "car", "lamp", "bench"],
        },
        "splits": {"train": 12, "val": None, "test": None},
        "split_fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
        "views_per_sample": [1, 2],
        "eval_views": 2,
        "augment": {"crop": False, "flip": True, "random_background": False, "color_jitter": 0.0},
        "batch_size": 3,
        "pack_workers": 0,
        "cache_dir": os.fspath(tmp_path / "cache"),
    }
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm, R2N2DataModule) and isinstance(dm.source, ShapeNetSource)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.categories == ["bench", "car", "chair", "lamp"]
    assert len(dm.datasets["train"]) == 12
    batch = next(iter(dm.train_dataloader()))
    assert images(batch).shape[0] == 3 and images(batch).shape[1] in (1, 2)
    val = next(iter(dm.val_dataloader()))
    assert images(val).shape[1] == 2
    assert set(val["category"]) <= {"bench", "car", "chair", "lamp"}


def test_synthetic_source_end_to_end(tmp_path):
    """data=synthetic: generated on first use, split by object, batches of the documented shapes;
    a second datamodule reuses the generated data; asking more samples grows the dataset."""
    from r2n2.data.sources import SyntheticSource

    source = SyntheticSource(
        str(tmp_path / "synthetic"), objects_per_category=4, views=3, categories=["chair", "table"], workers=1
    )
    dm = R2N2DataModule(source, cache_dir=str(tmp_path / "cache"), batch_size=4, pack_workers=0)
    dm.prepare_data()
    dm.setup()
    generated = list((tmp_path / "synthetic").iterdir())
    assert len(generated) == 1 and (generated[0] / "synth.json").is_file()
    ids = {s: {o["id"] for o in dm.datasets[s].objects} for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert dm.categories == ["chair", "table"]
    batch = next(iter(dm.train_dataloader()))
    assert images(batch).shape == (4, 1, 3, 127, 127) and batch["voxels"].shape == (4, 32, 32, 32)
    assert set(batch["category"]) <= {"chair", "table"}
    assert 0 < float(batch["voxels"].float().mean()) < 0.5

    again = R2N2DataModule(source, cache_dir=str(tmp_path / "cache"), batch_size=4, pack_workers=0)
    again.prepare_data()
    assert list((tmp_path / "synthetic").iterdir()) == generated  # nothing regenerated

    # 4 objects per category hold only 2 x 2 x 3 = 12 train samples: 30 makes it generate more
    needed = source.objects_needed({"train": 30, "val": None, "test": None})
    assert needed > 4 and int(needed * 0.7) * 2 * 3 >= 30


# --- to_images: the batched device-side preprocessing and augmentation ----------------------------


def _tv_reference(rgba: torch.Tensor, draw) -> torch.Tensor:
    """The augmentation one view at a time with torchvision's own functional ops (pad + crop, flip,
    brightness / saturation on [0, 1] floats; contrast by torchvision's formula about the object's
    alpha-weighted mean grey), then compositing on the R, G, B background and ImageNet mean/std."""
    from torchvision.transforms.v2 import functional as TF

    from r2n2.data.transforms import CROP_PAD

    out = torch.empty(*rgba.shape[:2], 3, *rgba.shape[2:4], dtype=torch.float64)
    s = rgba.shape[2]
    for b in range(rgba.shape[0]):
        for v in range(rgba.shape[1]):
            x = rgba[b, v].permute(2, 0, 1)  # (4, S, S) uint8
            dy, dx = (int(t) for t in draw.shift[b, v])
            x = TF.crop(TF.pad(x, [CROP_PAD], fill=0), CROP_PAD + dy, CROP_PAD + dx, s, s)
            if draw.flip[b, v]:
                x = TF.horizontal_flip(x)
            rgb, alpha = x[:3].float() / 255, x[3:].double() / 255
            br, co, sa = (float(f) for f in draw.jitter[b, v])
            rgb = TF.adjust_brightness(rgb, br)
            grey = TF.rgb_to_grayscale(rgb).double()
            mean = float((grey * alpha).sum() / alpha.sum())
            rgb = (co * rgb.double() + (1 - co) * mean).clamp(0, 1).float()
            rgb = TF.adjust_saturation(rgb, sa).double() * 255
            bg = draw.background[b, v].double().view(3, 1, 1)
            comp = rgb * alpha + bg * (1 - alpha)
            out[b, v] = (comp / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    return out


def test_augmentation_equals_torchvision_per_view_for_the_same_draw(dm):
    from r2n2.data.transforms import Augment, draw_augment

    rgba = torch.stack([torch.from_numpy(dm.datasets["train"][i]["rgba"]) for i in range(6)]).view(3, 2, 127, 127, 4)
    draw = draw_augment(Augment(), 3, 2, torch.Generator().manual_seed(3))
    assert draw.flip.any() and not draw.flip.all() and (draw.shift != 0).any()
    got = to_images(rgba, draw=draw)
    torch.testing.assert_close(got.double(), _tv_reference(rgba, draw), rtol=0, atol=2e-4)
    # the generator path draws exactly this
    torch.testing.assert_close(to_images(rgba, Augment(), torch.Generator().manual_seed(3)), got, rtol=0, atol=0)


def test_augmentation_draws_follow_the_documented_distribution():
    from r2n2.data.transforms import Augment, draw_augment

    d = draw_augment(Augment(color_jitter=0.2), 200, 5, torch.Generator().manual_seed(0))  # 1,000 views
    assert set(d.shift.unique().tolist()) == set(range(-5, 6))  # 3D-R2N2: 127 of 137, every shift drawn
    assert abs(d.shift.float().mean()) < 0.3
    assert 0.45 < d.flip.float().mean() < 0.55
    assert d.jitter.min() >= 0.8 and d.jitter.max() <= 1.2 and abs(float(d.jitter.mean()) - 1) < 0.01
    assert d.background.min() == 225 and d.background.max() == 255 and (d.background == d.background.round()).all()
    # 3D-R2N2 (TRAIN.NO_BG_COLOR_RANGE): R, G and B drawn separately, so most backgrounds are not grey
    assert d.background.shape == (200, 5, 3) and (d.background.std(-1) > 0).float().mean() > 0.9
    off = draw_augment(Augment(crop=False, flip=False, random_background=False, color_jitter=0), 2, 1)
    assert off.shift is off.flip is off.jitter is off.background is None


def test_contrast_jitter_keeps_the_objects_mean_grey(dm):
    """Contrast pulls towards the object's own mean grey: a mostly transparent view is not darkened
    (its transparent pixels, black in RGB, once counted 69% of a chair view's mean)."""
    from r2n2.data.transforms import AugmentDraw, _grey

    rgba = torch.from_numpy(dm.datasets["train"][0]["rgba"])[None]  # (1, 1, S, S, 4)
    assert (rgba[..., 3] == 0).float().mean() > 0.3  # the view is mostly transparent
    alpha = rgba[..., 3].float()[:, :, None] / 255  # (1, 1, 1, S, S)
    opaque = {"background": torch.zeros(1, 1, 3)}
    plain = to_images(rgba, draw=AugmentDraw(**opaque))
    low = to_images(rgba, draw=AugmentDraw(jitter=torch.tensor([[[1.0, 0.5, 1.0]]]), **opaque))

    def object_grey(images):  # back to [0, 1] RGB, the object's alpha-weighted mean grey
        rgb = images * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        return float(_grey(rgb.float()).sum() / alpha.sum())  # composited on black: grey(rgb) * alpha

    before, after = object_grey(plain), object_grey(low)
    assert abs(after - before) < 0.01 * before  # contrast 0.5 keeps the object's mean grey


def test_to_images_rejects_float_input():
    with pytest.raises(ValueError, match=r"uint8"):
        to_images(torch.zeros(1, 1, 8, 8, 4))


class CountingSource(ShapeNetSource):
    """The real ShapeNet source, counting how often it lists its files."""

    listings = 0

    def records(self, *args, **kwargs):
        type(self).listings += 1
        return super().records(*args, **kwargs)


def test_a_later_run_opens_its_caches_without_listing_the_source(root, tmp_path):
    """Issue 24: a start that finds its caches reads the source's folders (the fingerprint), not its
    files; a changed parameter or source lists again."""

    def build(**kwargs) -> R2N2DataModule:
        dm = R2N2DataModule(
            CountingSource(os.fspath(root)),
            split_fractions=FRACTIONS,
            batch_size=4,
            pack_workers=0,
            cache_dir=os.fspath(tmp_path / "cache"),
            **kwargs,
        )
        dm.prepare_data()
        dm.setup("fit")
        return dm

    first = build()
    assert CountingSource.listings == 1  # once for every split, not once per hook
    later = build()
    assert CountingSource.listings == 1
    assert {s: d.folder for s, d in later.datasets.items()} == {s: d.folder for s, d in first.datasets.items()}
    assert later.categories == first.categories == CATEGORIES
    for a, b in zip(later.train_dataloader(), first.train_dataloader(), strict=True):
        assert torch.equal(a["rgba"], b["rgba"]) and a["object_id"] == b["object_id"]
    build(seed=1)
    assert CountingSource.listings == 2


@pytest.mark.parametrize("device_data", [True, False], ids=["device", "loader"])
def test_a_corrupt_image_met_in_training_names_the_cache_and_is_rebuilt(shared_data, tmp_path, device_data):
    """A byte flipped in the packed training images after the cache was built: the start passes (it
    reads no image), the first batch holding that image stops with an error naming the cache, on
    either input path (2 DataLoader workers, the default), and the next start rebuilds the cache and
    trains on the images as packed before."""
    from r2n2.data.errors import DataError

    src = tmp_path / "src"
    shutil.copytree(shared_data / "r2n2-sample", src)
    kwargs = dict(device_data=device_data, num_workers=2, persistent_workers=True)
    dm = make_dm(src, tmp_path / "cache", **kwargs)
    before = [b["rgba"].clone() for b in dm.train_dataloader()]
    folder = dm.datasets["train"].folder
    table = np.load(folder / "images.npy")
    with open(folder / "images.z", "r+b") as f:  # a byte inside stored image 5
        f.seek(int(table[5, 0]) + 50)
        byte = f.read(1)
        f.seek(int(table[5, 0]) + 50)
        f.write(bytes([byte[0] ^ 0xFF]))
    dm = make_dm(src, tmp_path / "cache", **kwargs)
    with pytest.raises(DataError, match=f"{folder}: image 5 of the cache is corrupt"):
        for _ in dm.train_dataloader():
            pass
    assert not (folder / "index.json").exists()
    again = make_dm(src, tmp_path / "cache", **kwargs)
    assert again.datasets["train"].folder == folder
    for a, b in zip(again.train_dataloader(), before, strict=True):
        assert torch.equal(a["rgba"], b)

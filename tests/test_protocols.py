"""protocol=ours|pix2vox|r2n2: which samples and views each scores, and r2n2-eval protocol=pix2vox as
users run it (the best threshold chosen on test, labelled so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from r2n2.evaluation import scoring as S

CONF = Path(__file__).resolve().parents[1] / "conf" / "protocol"


def _split(folder: Path, views: int, samples: list[list[int]]):
    """Two objects of 4 stored views each (images numbered by their index), given samples."""
    from r2n2.data.cache import write_split
    from r2n2.data.dataset import PackedDataset

    objects = [{"id": f"o{i}", "category": "chair", "first": 4 * i, "count": 4} for i in range(2)]
    images = np.zeros((8, 2, 2, 4), np.uint8)
    images[..., 0] = np.arange(8)[:, None, None]  # red = the stored image's index
    write_split(folder, images, np.zeros((2, 8, 8, 8), bool), objects, samples)
    return PackedDataset(folder, views, ["chair"])


def test_first_views_scores_one_sample_per_object_on_renderings_00_to_n(tmp_path):
    ds = _split(tmp_path / "s", 3, [[0, 2], [0, 3], [1, 1], [1, 0]])
    first = S.first_views(ds, 3)
    assert first.obj.tolist() == [0, 1] and first.slots.tolist() == [[0, 1, 2], [4, 5, 6]]
    assert first.rgba(np.arange(2), 2)[..., 0, 0, 0].tolist() == [[0, 1], [4, 5]]  # the images it reads
    assert not first.binary_alpha and S.first_views(ds, 3, binary_alpha=True).binary_alpha
    ours = S.all_samples(ds, 3)
    assert len(ours) == 4 and ours.slots[:, 0].tolist() == [2, 3, 5, 4]  # each sample's own view first
    for row, slots in zip(ours.rows, ours.slots):  # v views = the first v of the V-view list, as before
        for v in (1, 2, 3):
            other = _split(tmp_path / f"v{v}-{row}", v, [[0, 2], [0, 3], [1, 1], [1, 0]])
            assert other.view_slots(int(row)).tolist() == slots[:v].tolist()


def _many(folder: Path, objects: int, count: int, ids=None, images=None):
    """A split of ``objects`` objects of ``count`` stored views each (``images`` or zeros), one
    sample per object."""
    from r2n2.data.cache import write_split
    from r2n2.data.dataset import PackedDataset

    ids = ids or [f"o{i}" for i in range(objects)]
    records = [{"id": ids[i], "category": "chair", "first": count * i, "count": count} for i in range(objects)]
    images = np.zeros((objects * count, 2, 2, 4), np.uint8) if images is None else images
    write_split(folder, images, np.zeros((objects, 8, 8, 8), bool), records, [[i, 0] for i in range(objects)])
    return PackedDataset(folder, 1, ["chair"])


def test_random_views_draw_with_replacement_as_3d_r2n2_and_repeat(tmp_path):
    """3D-R2N2 (13a30e2, lib/data_process.py): ``np.random.choice(24, n)`` per test object."""
    ds = _many(tmp_path / "a", 400, 24)
    drawn = S.random_views(ds, 2, seed=0)
    offset = drawn.slots - ds.first[drawn.obj, None]
    assert drawn.obj.tolist() == list(range(400)) and offset.min() >= 0 and offset.max() < 24
    # the reference: numpy's legacy choice(24, 2) with replacement repeats a view 1 time in 24
    legacy = np.random.RandomState(0)
    ref = np.mean([len(set(legacy.choice(24, 2))) == 1 for _ in range(20000)])
    ours = np.mean(offset[:, 0] == offset[:, 1])
    assert abs(ref - 1 / 24) < 0.006 and abs(ours - 1 / 24) < 3 * np.sqrt(1 / 24 / 400)  # 3 sigma
    assert (offset[:, 0] == offset[:, 1]).any()  # with replacement: 00..n-1 (first_views) never repeats
    assert np.array_equal(S.random_views(ds, 2, seed=0).slots, drawn.slots)  # seeded: repeatable
    assert not np.array_equal(S.random_views(ds, 2, seed=1).slots, drawn.slots)
    # a v-view draw is the prefix of the V-view draw, and an object's draw ignores the other objects
    assert np.array_equal(S.random_views(ds, 5, seed=0).slots[:, :2], drawn.slots)
    alone = _many(tmp_path / "b", 1, 24, ids=["o7"])
    assert (S.random_views(alone, 2).slots[0] - alone.first[0]).tolist() == offset[7].tolist()
    # 5 draws of 4 stored views must repeat one
    few = S.random_views(_many(tmp_path / "c", 3, 4), 5)
    assert all(len(set(row)) < 5 for row in few.slots.tolist())


def test_binary_alpha_composites_as_3d_r2n2(tmp_path):
    """3D-R2N2's add_random_color_background: background where alpha == 0, the pixel's own colour
    elsewhere (no blending); the result normalised as every input here."""
    from r2n2.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_images

    rgba = np.zeros((2, 2, 2, 4), np.uint8)
    rgba[..., :3] = [[[[200, 10, 50], [90, 90, 90]], [[0, 0, 0], [255, 255, 0]]]]
    rgba[..., 3] = [[0, 1], [128, 255]]
    ds = _many(tmp_path / "a", 1, 2, images=rgba)
    hard = S.random_views(ds, 1, binary_alpha=True)
    got = to_images(hard.rgba(np.arange(1), 1))[0, 0].numpy()
    view = rgba[hard.slots[0, 0] - ds.first[0]].astype(np.float32)
    ref = np.where(view[..., 3:] == 0, 240.0, view[..., :3]) / 255  # (2, 2, 3)
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(got.transpose(1, 2, 0), ref, atol=1e-5)
    soft = to_images(S.random_views(ds, 1).rgba(np.arange(1), 1))[0, 0].numpy()
    assert not np.allclose(soft, got, atol=1e-3)  # blending differs on partly transparent pixels


def test_protocol_configs_say_what_the_papers_did():
    p2v, r2n2, ours = (OmegaConf.load(CONF / f"{n}.yaml") for n in ("pix2vox", "r2n2", "ours"))
    assert (p2v.samples, list(p2v.thresholds), p2v.choose_threshold) == ("first_views", [0.2, 0.3, 0.4, 0.5], "test")
    assert p2v.composite == "binary" and ours.get("composite", "blend") == "blend"
    assert (r2n2.samples, list(r2n2.thresholds), r2n2.threshold) == ("random_views", [0.4], 0.4)
    assert (r2n2.composite, r2n2.choose_threshold) == ("binary", "none")
    assert (ours.samples, ours.threshold, ours.choose_threshold) == ("all", 0.3, "val")


@pytest.mark.slow
def test_eval_protocol_pix2vox_as_users_run_it(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "p2v"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "r2n2-eval"),
            f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
            "protocol=pix2vox",
            "fscore.points=512",
            "fscore.workers=0",
            "figures=false",
            "recognition=false",
            "progress=false",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["protocol"]["name"] == "pix2vox" and result["num_samples"] == 3  # one per test object
    chosen = result["threshold_selection"]
    assert chosen["chosen_on"] == "test"
    for v, c in chosen["per_views"].items():
        means = {t: result["model"][v][f"iou@{t:g}"]["mean_over_samples"] for t in (0.2, 0.3, 0.4, 0.5)}
        assert c["test_iou"] == max(means.values()) and means[c["threshold"]] == c["test_iou"]
    assert "chosen on the test set" in (out / "eval.md").read_text()


@pytest.mark.slow
def test_eval_protocol_r2n2_as_users_run_it(trained, tmp_path):
    """r2n2-eval protocol=r2n2: one sample per test object, its views drawn (seeded) as 3D-R2N2, IoU at
    0.4 only, no threshold chosen; the same figures when run again."""
    run_dir, _ = trained
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "r2n2-eval"),
                f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
                "protocol=r2n2",
                "views=[1,2]",
                "fscore.points=512",
                "fscore.workers=0",
                "figures=false",
                "recognition=false",
                "progress=false",
                f"hydra.run.dir={out}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((out / "eval.json").read_text()))
    result = results[0]
    assert result["protocol"]["samples"] == "random_views" and result["num_samples"] == 3  # one per test object
    assert result["thresholds"] == [0.4] and result["threshold_selection"] is None
    assert set(result["model"]) == {"1", "2"} and list(result["model"]["1"]) == ["iou@0.4", "fscore@1%"]
    assert results[1]["model"] == result["model"]  # seeded draw: repeatable
    assert "drawn with replacement" in (tmp_path / "a" / "eval.md").read_text()


def test_experiment_r2n2_augments_as_3d_r2n2_without_our_colour_jitter():
    """3D-R2N2's preprocess_img (13a30e2) crops, flips and draws a background colour; it has no
    colour jitter, so experiment=r2n2 leaves ours out."""
    from hydra import compose, initialize_config_dir

    from r2n2.data.transforms import Augment

    with initialize_config_dir(str(CONF.parent), version_base="1.3"):
        cfg = compose("config", ["experiment=r2n2"])
    assert Augment(**cfg.data.augment) == Augment(crop=True, flip=True, random_background=True, color_jitter=0.0)

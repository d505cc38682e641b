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

from r2n2 import scoring as S

CONF = Path(__file__).resolve().parents[1] / "conf" / "protocol"


def _split(folder: Path, views: int, samples: list[list[int]]):
    """Two objects of 4 stored views each (images numbered by their index), given samples."""
    from r2n2.data.dataset import PackedDataset

    folder.mkdir(parents=True)
    objects = [{"id": f"o{i}", "category": "chair", "first": 4 * i, "count": 4} for i in range(2)]
    (folder / "index.json").write_text(json.dumps({"image_size": 2, "resolution": 8, "num_images": 8,
                                                   "objects": objects, "samples": samples}))
    images = np.zeros((8, 2, 2, 4), np.uint8)
    images[..., 0] = np.arange(8)[:, None, None]  # red = the stored image's index
    (folder / "images.u8").write_bytes(images.tobytes())
    (folder / "voxels.u8").write_bytes(np.zeros((2, 64), np.uint8).tobytes())
    return PackedDataset(folder, views, ["chair"])


def test_first_views_scores_one_sample_per_object_on_renderings_00_to_n(tmp_path):
    ds = _split(tmp_path / "s", 3, [[0, 2], [0, 3], [1, 1], [1, 0]])
    first = S.first_views(ds, 3)
    assert first.obj.tolist() == [0, 1] and first.slots.tolist() == [[0, 1, 2], [4, 5, 6]]
    assert first.rgba(np.arange(2), 2)[..., 0, 0, 0].tolist() == [[0, 1], [4, 5]]  # the images it reads
    ours = S.all_samples(ds, 3)
    assert len(ours) == 4 and ours.slots[:, 0].tolist() == [2, 3, 5, 4]  # each sample's own view first
    for row, slots in zip(ours.rows, ours.slots):  # v views = the first v of the V-view list, as before
        for v in (1, 2, 3):
            other = _split(tmp_path / f"v{v}-{row}", v, [[0, 2], [0, 3], [1, 1], [1, 0]])
            assert other.view_slots(int(row)).tolist() == slots[:v].tolist()


def test_protocol_configs_say_what_the_papers_did():
    p2v, r2n2, ours = (OmegaConf.load(CONF / f"{n}.yaml") for n in ("pix2vox", "r2n2", "ours"))
    assert (p2v.samples, list(p2v.thresholds), p2v.choose_threshold) == ("first_views", [0.2, 0.3, 0.4, 0.5], "test")
    assert (r2n2.samples, list(r2n2.thresholds), r2n2.threshold) == ("first_views", [0.4], 0.4)
    assert (ours.samples, ours.threshold, ours.choose_threshold) == ("all", 0.3, "val")


@pytest.mark.slow
def test_eval_protocol_pix2vox_as_users_run_it(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "p2v"
    proc = subprocess.run([str(Path(sys.executable).parent / "r2n2-eval"), f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
                           "protocol=pix2vox", "fscore.points=512", "fscore.workers=0", "figures=false",
                           "recognition=false", "progress=false", f"hydra.run.dir={out}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["protocol"]["name"] == "pix2vox" and result["num_samples"] == 3  # one per test object
    chosen = result["threshold_selection"]
    assert chosen["chosen_on"] == "test"
    for v, c in chosen["per_views"].items():
        means = {t: result["model"][v][f"iou@{t:g}"]["mean_over_samples"] for t in (0.2, 0.3, 0.4, 0.5)}
        assert c["test_iou"] == max(means.values()) and means[c["threshold"]] == c["test_iou"]
    assert "chosen on the test set" in (out / "eval.md").read_text()

"""The honest headline (issue 12): test IoU next to both mean shapes, and warnings for a degenerate
model, checked on hand-made predictions and on a real tiny run of a model that cannot learn (lr=0)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import HELPERS, manifest_args, run_train, write_manifest

from r2n2.evaluation.headline import SAME_GRID_IOU, degeneracy_warnings, headline
from r2n2.evaluation.spread import PredictionSpread


def _spread(probs: torch.Tensor, batch: int = 3) -> dict:
    cb = PredictionSpread()
    for chunk in probs.split(batch):
        cb.update(chunk)
    return cb.compute()


def test_spread_of_identical_predictions_is_degenerate():
    probs = torch.full((7, 32, 32, 32), 0.6)  # the full cube for every image
    s = _spread(probs)
    assert s["test/pred_pairwise_iou"] == 1.0 and s["test/pred_voxel_std"] < 1e-6
    assert s["test/pred_occupied_fraction"] == 1.0
    assert any("same grid" in w for w in degeneracy_warnings(s))


@pytest.mark.slow
def test_spread_under_ddp_equals_one_process(tmp_path):
    """Two real DDP processes (gloo) each see their shard of 301 test predictions; the gathered
    statistics equal one process's, including which 256 samples the pairwise IoU keeps."""
    out = tmp_path / "spread.json"
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "spread_ddp.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["n"] == [301, 301]
    assert got["kept"] == [list(range(0, 301, 2))] * 2  # every 2nd sample of the split, in its order
    assert got["ddp"].keys() == got["one"].keys()
    for key, value in got["one"].items():
        assert got["ddp"][key] == pytest.approx(value, abs=1e-9), key


def test_pairwise_iou_samples_the_whole_split_not_its_first_category():
    """A split lists one category's objects first: 300 identical predictions (a uniform category),
    then 300 distinct ones. Kept over the whole split (every 3rd of 600), the pairwise IoU is far from
    the 'same grid' warning; the first 256 alone would have raised it."""
    probs = torch.zeros(600, 32, 32, 32)
    probs[:300, :8] = 0.9  # the same slab for the whole first category
    for i in range(300, 600):  # then a different small box per sample
        probs[i, i % 30, (i // 30) % 30 : (i // 30) % 30 + 2, :2] = 0.9
    cb = PredictionSpread()
    cb.reset(total=600)
    for chunk in probs.split(7):
        cb.update(chunk)
    assert cb.kept_index == list(range(0, 600, 3))
    s = cb.compute()
    assert s["test/pred_pairwise_iou"] < 0.5 and not any("same grid" in w for w in degeneracy_warnings(s))
    first = _spread(probs[:256])
    assert first["test/pred_pairwise_iou"] == 1.0  # what keeping the first 256 samples measured


def test_a_limited_test_spreads_over_the_samples_it_scores():
    """A real Trainer.test of 600 predictions in batches of 8: the whole split keeps every 3rd; with
    ``limit_test_batches=2`` (``debug=limit``) the 16 scored samples are all kept, not every 3rd of them."""
    import lightning as L
    from helpers.spread_ddp import Identity

    logits = torch.randn(600, 32, 32, 32, generator=torch.Generator().manual_seed(0))

    for limit, kept in ((None, list(range(0, 600, 3))), (2, list(range(16)))):
        spread = PredictionSpread()
        L.Trainer(
            accelerator="cpu",
            limit_test_batches=limit,
            logger=False,
            callbacks=[spread],
            enable_progress_bar=False,
            enable_model_summary=False,
        ).test(Identity(logits, batch_size=8))
        assert spread.kept_index == kept, limit


def test_spread_of_different_predictions_by_hand():
    """Two boxes of 8 voxels overlapping in 4, and a disjoint third: pairwise IoUs 4/12, 0, 0."""
    probs = torch.zeros(3, 32, 32, 32)
    probs[0, 0:2, 0:2, 0:2] = 0.9
    probs[1, 1:3, 0:2, 0:2] = 0.9
    probs[2, 10:12, 10:12, 10:12] = 0.9
    s = _spread(probs, batch=2)
    assert abs(s["test/pred_pairwise_iou"] - (4 / 12) / 3) < 1e-6
    p = probs.flatten(1).double()
    assert abs(s["test/pred_voxel_std"] - float(p.std(0, unbiased=False).mean())) < 1e-9
    assert s["test/pred_occupied_fraction"] == 24 / (3 * 32**3)
    assert degeneracy_warnings({**s, "test/iou": 0.5, "baseline/global_mean_shape_test_iou": 0.2}) == []


def test_headline_and_warning_below_the_global_mean_shape():
    m = {"test/iou": 0.45, "baseline/global_mean_shape_test_iou": 0.2, "baseline/category_mean_shape_test_iou": 0.56}
    assert headline(m) == (
        "test IoU@0.3 0.4500 | global mean-shape baseline 0.2000 (+0.2500) | "
        "category mean-shape baseline 0.5600 (-0.1100)"
    )
    assert degeneracy_warnings(m) == []
    low = degeneracy_warnings({**m, "test/iou": 0.1})
    assert len(low) == 1 and "below the global mean shape" in low[0]


def test_a_model_that_cannot_learn_is_flagged_in_console_metrics_and_tensorboard(tmp_path):
    """lr=0: the initial network predicts p ~ 0.5 everywhere, i.e. the full cube for every photo."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv = write_manifest(tmp_path / "data", objects=6, views=2)
    args = [a for a in manifest_args(csv, tmp_path / "root") if a != "logger=none"] + ["optimizer.lr=0"]
    proc = run_train(args, tmp_path / "run")
    out = proc.stdout + proc.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["degenerate"] is True and m["test/pred_pairwise_iou"] >= SAME_GRID_IOU
    assert m["test/iou"] < m["baseline/global_mean_shape_test_iou"]
    assert "degenerate model: the model is below the global mean shape" in out
    assert "degenerate model: the model predicts nearly the same grid for every image" in out
    assert headline(m) in out  # the console line carries both mean shapes
    scalars = set()
    for f in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        scalars |= set(ea.Tags()["scalars"])
    assert {
        "hp/baseline/global_mean_shape_test_iou",
        "hp/baseline/category_mean_shape_test_iou",
        "hp/test/iou",
        "hp/test/pred_pairwise_iou",
    } <= scalars, scalars

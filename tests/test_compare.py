"""Every model trains through the same module, metric and configs; r2n2-compare measures them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from r2n2.cli.compare import MODELS
from r2n2.train.run import build

CONF = Path(__file__).resolve().parents[1] / "conf"


def training_set_loss(module, datamodule) -> float:
    """BCE over the whole (tiny) training split, 1 view each, dropout off, BatchNorm on batch
    statistics as in training, no gradient."""
    import torch
    import torch.nn.functional as F

    from r2n2.data.datamodule import collate
    from r2n2.data.transforms import to_images

    ds = datamodule.datasets["train"]
    batch = collate([ds[i] for i in range(len(ds))])
    module.train()
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():
        logits = module(to_images(batch["rgba"])).float()
        return float(F.binary_cross_entropy_with_logits(logits, batch["voxels"].float()))


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_two_epochs_with_random_view_counts_lower_the_loss(model, data_dir, tmp_path):
    """3D-R2N2's recipe (a random number of distinct views per batch, here 1..3) for every model:
    after 2 epochs the loss on the training split is below the loss before training."""
    from conftest import tiny

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            [
                f"model={model}",
                *tiny(data_dir),
                "data.views_per_sample=[1,3]",
                "logger=none",
                "callbacks.model_checkpoint=null",
                "callbacks.last_checkpoint=null",
                "trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                f"paths.output_dir={tmp_path}",
            ],
        )
    datamodule, module, trainer, _ = build(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    before = training_set_loss(module, datamodule)
    trainer.fit(module, datamodule=datamodule)
    after = training_set_loss(module, datamodule)
    assert trainer.current_epoch == 2 and after < before, (model, before, after)


@pytest.mark.slow
def test_compare_writes_the_table_with_measured_flops(data_dir, tmp_path):
    out = tmp_path / "compare"
    cmd = [
        str(Path(sys.executable).parent / "r2n2-compare"),
        "--models",
        "seed_gru",
        "r2n2_gru",
        "--minutes",
        "0.1",
        "--test-samples",
        "6",
        "--out",
        str(out),
        f"paths.data_dir={data_dir}",
        "data.source.objects_per_category=4",
        "data.source.views=3",
        "data.source.categories=[chair,table,airplane]",
        "data.source.workers=1",
        "data.num_workers=0",
        "data.views_per_sample=[1,3]",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "compare.json").read_text())
    seed, r2n2 = result["models"]["seed_gru"], result["models"]["r2n2_gru"]
    assert r2n2["parameters"] == 32_206_401
    # REFERENCE.md: training cost per sample (1 view) 6.7 GFLOP for the seed model, 74 for 3D-R2N2
    assert 5.5 < seed["train_gflop_per_sample"] < 8 and 65 < r2n2["train_gflop_per_sample"] < 85
    for row in (seed, r2n2):
        assert row["train_samples_per_s"] > 0 and row["inference_ms_per_sample"] > 0 and row["peak_memory_mib"] > 0
        assert set(row["test_iou"]) == {"1", "3"} and row["samples_seen"] > 0
    md = (out / "compare.md").read_text()
    assert "| seed_gru | 6,566,908 |" in md and "| r2n2_gru | 32,206,401 |" in md


@pytest.mark.slow
def test_speed_only_measures_each_batch_size(tmp_path):
    """The GPU recipe (`--speed-only --speed-batches 8 256`), here on the CPU at batches 1 and 2."""
    out = tmp_path / "speed"
    cmd = [
        str(Path(sys.executable).parent / "r2n2-compare"),
        "--speed-only",
        "--models",
        "seed_gru",
        "--speed-batches",
        "1",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "compare.json").read_text())["speed"]
    assert [(r["model"], r["batch"]) for r in rows] == [("seed_gru", 1), ("seed_gru", 2)]
    # FLOPs per sample do not depend on the batch size
    assert rows[0]["train_gflop_per_sample"] == pytest.approx(rows[1]["train_gflop_per_sample"], rel=0.02)
    assert "| seed_gru | 2 | 6,566,908 |" in (out / "compare.md").read_text()

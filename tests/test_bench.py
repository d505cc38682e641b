"""r2n2-bench end to end on a tiny synthetic set: the three measurements, the table and bench.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, tiny


@pytest.mark.slow
def test_bench_measures_bare_loop_trainer_and_loader_and_writes_json(data_dir, tmp_path):
    """Two batch sizes, the default data settings (2 persistent workers) and channels_last: one row
    each, every rate positive, ratio = (b) / (a), the device named."""
    overrides = [o for o in tiny(data_dir) if not o.startswith(("data.num_workers", "trainer.max_epochs"))]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "r2n2.cli.bench",
            "--batch-sizes",
            "2",
            "4",
            "--warmup",
            "1",
            "--steps",
            "3",
            "--out",
            str(tmp_path),
            *overrides,
            "module.channels_last=true",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = result["rows"]
    assert [r["batch"] for r in rows] == [2, 4]
    for r in rows:
        assert r["bare_loop"] > 0 and r["trainer_fit"] > 0 and r["dataloader"] > 0
        assert r["ratio"] == pytest.approx(r["trainer_fit"] / r["bare_loop"])
        assert r["num_workers"] == 2 and r["channels_last"] is True and r["model"] == "SeedModel"
        assert r["input_path"] == "device"  # the default input path on the CPU
        assert r["loop_ms_per_step"] == pytest.approx(
            1000 * (r["batch"] / r["trainer_fit"] - r["batch"] / r["bare_loop"])
        )
    assert result["machine"] in proc.stdout and "| b/a |" in proc.stdout and "| (b) - (a) per step |" in proc.stdout
    assert f"| SeedModel | 4 | {rows[1]['precision']} |" in proc.stdout


@pytest.mark.slow
def test_bench_probe_measures_the_loops_own_cost(data_dir, tmp_path):
    """--probe: the launch-bound probe network in place of the model; the row names it and its
    per-step cost of Trainer.fit over the bare loop, in ms."""
    overrides = [o for o in tiny(data_dir) if not o.startswith(("data.num_workers", "trainer.max_epochs"))]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "r2n2.cli.bench",
            "--probe",
            "--batch-sizes",
            "8",
            "--warmup",
            "2",
            "--steps",
            "10",
            "--out",
            str(tmp_path),
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert row["model"] == "LaunchProbe" and row["overrides"][0] == "model=probe"
    assert f"| {row['loop_ms_per_step']:.2f} ms |" in proc.stdout

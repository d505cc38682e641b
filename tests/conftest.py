"""Shared test fixtures. Real data lives in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("R2N2_SHARED_DATA") or ROOT.parent / "shared" / "data")  # (the variable: for tests)
HELPERS = Path(__file__).resolve().parent / "helpers"


# CI sets R2N2_REQUIRE_SHARED=1 (.ci/run): there the real-data tests fail instead of skipping, so a
# green CI means they ran.
REQUIRE_SHARED = os.environ.get("R2N2_REQUIRE_SHARED") == "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ShapeNet/binvox/mat/photo samples; tests that need them skip where they are absent
    (fail, with R2N2_REQUIRE_SHARED=1)."""
    if not (SHARED / "README.md").exists():
        message = f"real data samples not found at {SHARED} (they sit beside the project checkout)"
        if REQUIRE_SHARED:
            pytest.fail(f"{message}; R2N2_REQUIRE_SHARED=1 requires them", pytrace=False)
        pytest.skip(message)
    return SHARED


# --- tiny real training runs, shared by the training, evaluation and prediction tests ------------


def tiny(data_dir: Path, epochs: int = 2) -> list[str]:
    """Overrides for a tiny but complete run on the synthetic source."""
    return [
        f"paths.data_dir={data_dir}",
        "data.source.objects_per_category=4",
        "data.source.views=3",
        "data.source.categories=[chair,table,airplane]",
        "data.source.workers=1",
        "data.batch_size=6",
        "data.eval_batch_size=6",
        "data.num_workers=0",
        "data.pack_workers=0",
        f"trainer.max_epochs={epochs}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "module.viz_samples=2",
    ]


def run_train(
    args: list[str], run_dir: Path | None = None, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def trained(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One complete default-config run (the quickstart, shrunk): shared by several tests."""
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, run_train(tiny(data_dir), run_dir)


def write_manifest(folder: Path, objects: int = 3, views: int = 2, seed: int = 0, grid: int = 32) -> Path:
    """A tiny data set in real formats for ``data=manifest``: per object ``views`` 64x64 RGBA PNGs of a
    random box on a transparent background and its ``grid``^3 voxels (.npy: the 32^3 box's, each voxel
    repeated (grid / 32)^3 times); objects alternate between the categories box/slab and are split
    train, val, test, train, ... Returns the CSV's path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,voxels,category,object_id,split"]
    for i in range(objects):
        lo, hi = rng.integers(4, 12, 3), rng.integers(20, 30, 3)
        vox = np.zeros((32, 32, 32), np.uint8)
        vox[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
        k = grid // 32
        np.save(folder / f"obj{i}.npy", vox.repeat(k, 0).repeat(k, 1).repeat(k, 2))
        images = []
        for v in range(views):
            rgba = np.zeros((64, 64, 4), np.uint8)
            a, b = 2 * lo[(v + 0) % 3], 2 * hi[(v + 1) % 3]
            rgba[a:b, a:b] = (*rng.integers(0, 255, 3), 255)
            Image.fromarray(rgba, "RGBA").save(folder / f"obj{i}_{v}.png")
            images.append(f"obj{i}_{v}.png")
        rows.append(f"{';'.join(images)},obj{i}.npy,{('box', 'slab')[i % 2]},obj{i},{('train', 'val', 'test')[i % 3]}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def manifest_args(csv: Path, data_dir: Path, epochs: int = 1) -> list[str]:
    """Overrides for a tiny run on a ``write_manifest`` data set (one process, no logger)."""
    return [
        f"paths.data_dir={data_dir}",
        "data=manifest",
        f"data.source.path={csv}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pack_workers=0",
        f"trainer.max_epochs={epochs}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "trainer.precision=32",
    ]

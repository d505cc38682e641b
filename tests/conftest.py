"""Shared test fixtures. Real data lives in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ShapeNet/binvox/mat/photo samples; tests that need them skip where they are absent."""
    if not (SHARED / "README.md").exists():
        pytest.skip(f"real data samples not found at {SHARED} (they sit beside the project checkout)")
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


def run_train(args: list[str], run_dir: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
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

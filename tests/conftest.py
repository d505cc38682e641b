"""Shared test fixtures. Real data lives in ../shared/data (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ShapeNet/binvox/mat/photo samples; tests that need them skip where they are absent."""
    if not (SHARED / "README.md").exists():
        pytest.skip(f"real data samples not found at {SHARED} (they sit beside the project checkout)")
    return SHARED

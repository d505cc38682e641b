"""The HTML reconstruction viewer (r2n2/vis/viewer.py + viewer.js): self-contained, its data round-trips,
and it loads and draws in a real headless browser (Debian's chromium), via r2n2-predict --html too."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2n2.vis import viewer

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
CHAIR = "r2n2-sample/ShapeNetVox32/03001627/pix2voxkeras_chair/model.binvox"
VIEW = "r2n2-sample/ShapeNetRendering/03001627/pix2voxkeras_chair/rendering/00.png"
WINDOW = (1000, 520)
# reports where the canvases are, so the screenshot can be checked inside them (added to a copy only)
PROBE = (
    "<script>document.body.dataset.rects = JSON.stringify([...document.querySelectorAll('canvas')]"
    ".map(c => { const r = c.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }));</script>"
)


def _chair_page(shared_data: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    from r2n2.data.formats import load_voxels, read_rgba

    gt = load_voxels(shared_data / CHAIR)
    probs = np.where(np.roll(gt, 2, axis=0), 0.8, 0.05).astype(np.float32)  # a shifted guess
    rgba = read_rgba(shared_data / VIEW, 127)[None, None]
    viewer.write_page(path, viewer.samples(["chair"], rgba, gt[None], probs[None], 0.3), "test page")
    return gt, probs


def _page_data(html: str) -> list[dict]:
    return json.loads(
        re.search(r'<script id="r2n2-data" type="application/json">(.*?)</script>', html, re.S)
        .group(1)
        .replace("<\\/", "</")
    )


def test_page_is_self_contained_and_its_grids_round_trip(shared_data, tmp_path):
    gt, probs = _chair_page(shared_data, tmp_path / "p.html")
    html = (tmp_path / "p.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load anything"
    assert "<script src" not in html and "<link" not in html and "import(" not in html
    (row,) = _page_data(html)
    unpack = lambda g: np.unpackbits(np.frombuffer(base64.b64decode(g["bits"]), np.uint8))[: g["r"] ** 3]  # noqa: E731
    assert np.array_equal(unpack(row["gt"]).reshape(gt.shape), gt)
    assert np.array_equal(unpack(row["pred"]).reshape(gt.shape), probs >= 0.3)
    inter, union = np.logical_and(gt, probs >= 0.3).sum(), np.logical_or(gt, probs >= 0.3).sum()
    assert row["iou"] == pytest.approx(inter / union) and 0 < row["iou"] < 1
    assert row["images"][0].startswith("data:image/png;base64,")


def _chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _check_draws(page: Path, tmp_path: Path, filled: list[bool]) -> list[np.ndarray]:
    """Load ``page`` in headless chromium: no console message at all (the page logs nothing, so any
    is an error or a warning), one canvas per entry of ``filled``, the ``True`` ones painted voxel
    faces and not blank in the screenshot (the others show an empty grid). Returns the canvas areas."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(probe, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    faces = [int(f) for f in re.findall(r'<canvas[^>]*data-faces="(\d+)"', dom.stdout)]
    assert [f > 0 for f in faces] == filled, faces
    rects = json.loads(re.search(r'data-rects="([^"]*)"', dom.stdout).group(1).replace("&quot;", '"'))
    shot = tmp_path / "shot.png"
    _chromium(probe, tmp_path, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    areas = []
    for (left, top, width, height), full in zip(rects, filled):
        area = pixels[int(top) + 2 : int(top + height) - 2, int(left) + 2 : int(left + width) - 2]
        assert area.size, (rects, pixels.shape)
        drawn = (np.abs(area - 255).max(-1) > 30).mean()  # share of pixels off the white background
        assert drawn > 0.02 if full else drawn < 0.02, f"canvas at {left},{top}: {drawn:.3%} drawn"
        areas.append(area)
    return areas


@needs_chromium
def test_page_loads_and_draws_in_headless_chromium(shared_data, tmp_path):
    _chair_page(shared_data, tmp_path / "p.html")
    gt_area, pred_area = _check_draws(tmp_path / "p.html", tmp_path, [True, True])
    # ground truth is painted blue, the prediction orange
    blue = lambda a: ((a[..., 2] - a[..., 0]) > 40).mean()  # noqa: E731
    assert blue(gt_area) > 0.02 and blue(pred_area) < 0.001


@needs_chromium
def test_predict_html_on_real_photos(trained, shared_data, tmp_path):
    run_dir, _ = trained
    photos = [str(shared_data / "photos" / f"{i}.png") for i in range(2)]
    out = tmp_path / "pred"
    proc = subprocess.run(
        [
            str(BIN / "r2n2-predict"),
            "--ckpt",
            str(run_dir / "checkpoints" / "best.ckpt"),
            *photos,
            "--out",
            str(out),
            "--html",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = _page_data((out / "prediction.html").read_text())
    assert len(row["images"]) == 2 and row["gt"] is None and row["iou"] is None
    assert row["occupied"] == int((np.load(out / "prediction.npy") >= 0.3).sum())
    _check_draws(out / "prediction.html", tmp_path, [row["occupied"] > 0])

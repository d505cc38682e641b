"""A self-contained HTML page of reconstructions: input | ground truth | prediction, as rotatable voxels.

The page needs no network and no library: its renderer (``r2n2/vis/viewer.js``, a canvas-2D voxel painter
of ~100 lines) and every image and grid are inlined. Drag any 3D view to rotate all of them together,
scroll to zoom, double-click to reset. Grids are (x, y, z) with y up, as everywhere in r2n2.

    write_page(path, [Sample(title, images, gt, probs, threshold)], heading)
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r2n2.utils.atomic import atomic_write

JS = Path(__file__).with_name("viewer.js")


@dataclass
class Sample:
    """One row of the page.

    images: the input views, each ``(H, W, 3 | 4) uint8`` (RGBA is shown on a checkerboard-free grey)
    gt: ``(R, R, R)`` bool ground truth, or None (a photo without one)
    probs: ``(R, R, R)`` float occupancy probabilities of the prediction
    threshold: occupancy threshold for the prediction (and the IoU)
    """

    title: str
    images: list[np.ndarray]
    gt: np.ndarray | None
    probs: np.ndarray
    threshold: float

    @property
    def iou(self) -> float | None:
        if self.gt is None:
            return None
        pred, gt = self.probs >= self.threshold, self.gt > 0.5
        union = np.logical_or(pred, gt).sum()
        return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def _png(image: np.ndarray) -> str:
    """``(H, W, 3|4) uint8`` -> a PNG data URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _grid(occupied: np.ndarray) -> dict:
    """A bool grid as ``{"r": R, "bits": base64 of np.packbits}``, index (x * R + y) * R + z."""
    occupied = np.asarray(occupied, dtype=bool)
    return {"r": int(occupied.shape[0]), "bits": base64.b64encode(np.packbits(occupied.ravel())).decode()}


def _row(sample: Sample) -> dict:
    iou = sample.iou
    return {
        "title": sample.title,
        "images": [_png(im) for im in sample.images],
        "gt": None if sample.gt is None else _grid(sample.gt > 0.5),
        "pred": _grid(sample.probs >= sample.threshold),
        "iou": iou,
        "threshold": sample.threshold,
        "occupied": int((sample.probs >= sample.threshold).sum()),
    }


STYLE = """
body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 15px; margin: 18px 0 6px; }
.row { display: flex; gap: 12px; align-items: flex-start; }
.cell { display: flex; flex-direction: column; align-items: center; font-size: 13px; }
.cell img { width: 160px; height: 160px; object-fit: contain; background: #f0f0f0; border: 1px solid #ccc; }
.views { display: flex; gap: 4px; flex-wrap: wrap; max-width: 330px; }
canvas { border: 1px solid #ccc; background: #ffffff; cursor: grab; }
.none { width: 240px; height: 240px; display: flex; align-items: center; justify-content: center;
        border: 1px dashed #bbb; color: #888; }
.hint { color: #666; font-size: 12px; }
"""


def page(samples: list[Sample], heading: str, note: str = "") -> str:
    """The complete HTML document (a string) for ``samples``."""
    data = json.dumps([_row(s) for s in samples]).replace("</", "<\\/")  # no "</script>" inside the script
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(heading)}</h1>
<p class="hint">{html.escape(note)} Drag a 3D view to rotate all of them, scroll to zoom, double-click to reset.
Voxel grids in (x, y, z), y up; the prediction is thresholded at the stated p.</p>
<div id="rows"></div>
<script id="r2n2-data" type="application/json">{data}</script>
<script>{JS.read_text()}</script>
</body></html>
"""


def write_page(path: str | os.PathLike, samples: list[Sample], heading: str, note: str = "") -> Path:
    """Write the page atomically; returns its path."""
    with atomic_write(path, "w") as f:
        f.write(page(samples, heading, note))
    return Path(path)


def samples(titles: list[str], rgba, gts, probs, threshold: float) -> list[Sample]:
    """Page rows from batched arrays (numpy or torch): ``rgba: (N, V, S, S, 4) uint8`` inputs,
    ``gts: (N, R, R, R)`` ground truth (or None), ``probs: (N, R, R, R)`` float probabilities."""

    def arr(x):
        return None if x is None else (x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x))

    rgba = rgba.cpu().numpy() if hasattr(rgba, "detach") else np.asarray(rgba)
    gts, probs = arr(gts), arr(probs)
    return [
        Sample(str(title), list(rgba[i]), None if gts is None else gts[i] > 0.5, probs[i], float(threshold))
        for i, title in enumerate(titles)
    ]

"""Ray-cast renderer for the synthetic ShapeNet: the analytic primitives seen by the R2N2 camera.

Output matches ShapeNetRendering (REFERENCE.md): ``(137, 137, 4) uint8`` RGBA, straight (not
premultiplied) alpha, background RGBA = 0. Rays go through the centres of a ``SUPERSAMPLE``-times finer
grid (``camera.pixel_rays`` at 137 * SUPERSAMPLE: the same pinhole, sub-pixel centres; computed only in
the object's screen window), so alpha is the pixel's coverage and edges are antialiased. Each primitive
is only tested against the rays inside the screen rectangle of its projected bounding box.

Shading is Lambertian: an ambient term, a light from above and a head light at the camera. On the real
ShapeNetRendering sample, faces lit from above are ~205/255 and vertical faces ~150/255 for a light
grey material; these constants give about the same contrast with the flat, soft look of those images.
"""

from __future__ import annotations

import math

import numpy as np

from r2n2.data.camera import RENDER_SIZE, View, focal_length
from r2n2.data.synth.primitives import mul, mul_rows

SUPERSAMPLE = 3  # rays per pixel edge: 3x3 = 9 coverage levels per pixel
AMBIENT = 0.38
KEY_WEIGHT, KEY_DIR = 0.42, np.array([0.25, 1.0, 0.15]) / math.sqrt(0.25**2 + 1.0 + 0.15**2)  # from above
HEAD_WEIGHT = 0.32  # a light at the camera


def _screen_rect(prim, view: View, size: int) -> tuple[int, int, int, int] | None:
    """Rows and columns ``(r0, r1, c0, c1)`` of the rays that can meet ``prim``; None when off-screen."""
    cam = mul(prim.corners() - view.position(), view.rotation().T)  # (8, 3) camera coordinates
    if (cam[:, 2] <= 1e-6).any():  # a corner behind the camera: test every ray
        return 0, size, 0, size
    f, c = focal_length(size), size / 2.0
    cols = c + f * cam[:, 0] / cam[:, 2]
    rows = c - f * cam[:, 1] / cam[:, 2]
    # ray i passes through pixel centre i + 0.5; one extra ray each side absorbs rounding
    c0, c1 = max(math.floor(cols.min() - 0.5) - 1, 0), min(math.floor(cols.max() - 0.5) + 2, size)
    r0, r1 = max(math.floor(rows.min() - 0.5) - 1, 0), min(math.floor(rows.max() - 0.5) + 2, size)
    return None if c0 >= c1 or r0 >= r1 else (r0, r1, c0, c1)


def shade(normals: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Lambertian intensity for unit ``normals: (N, 3)`` seen along unit ray ``dirs: (N, 3)`` -> (N,)."""
    key = np.clip(normals[:, 0] * KEY_DIR[0] + normals[:, 1] * KEY_DIR[1] + normals[:, 2] * KEY_DIR[2], 0.0, None)
    head = np.clip(-(normals * dirs).sum(axis=-1), 0.0, None)
    return AMBIENT + KEY_WEIGHT * key + HEAD_WEIGHT * head


def window_rays(view: View, size: int, rows: slice, cols: slice) -> np.ndarray:
    """Unit world directions of the rays through the pixel centres of a window of a ``size``-pixel
    image: (3, h, w), component-major. Equal to ``camera.pixel_rays(view, size)[rows, cols]``
    moved to the front axis (tested), without computing the whole image."""
    f, c = focal_length(size), size / 2.0
    x = (np.arange(cols.start, cols.stop) + 0.5 - c) / f
    y = -(np.arange(rows.start, rows.stop) + 0.5 - c) / f
    cam = np.empty((3, len(y), len(x)))
    cam[0], cam[1], cam[2] = x[None, :], y[:, None], 1.0
    dirs = mul_rows(view.rotation().T, cam.reshape(3, -1)).reshape(cam.shape)  # camera -> world
    return dirs / np.sqrt((dirs * dirs).sum(axis=0))


def render(obj, view: View, image_size: int = RENDER_SIZE, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Render ``obj`` (anything with ``.primitives``) from ``view``. Returns ``(H, W, 4) uint8`` RGBA."""
    size = image_size * supersample
    origin = view.position()
    rects = [_screen_rect(prim, view, size) for prim in obj.primitives]
    out = np.zeros((image_size, image_size, 4), dtype=np.uint8)
    live = [r for r in rects if r is not None]
    if not live:
        return out
    # the window holding every primitive's rectangle, in whole output pixels
    wr0 = min(r[0] for r in live) // supersample * supersample
    wc0 = min(r[2] for r in live) // supersample * supersample
    wr1 = -(-max(r[1] for r in live) // supersample) * supersample
    wc1 = -(-max(r[3] for r in live) // supersample) * supersample
    dirs = window_rays(view, size, slice(wr0, wr1), slice(wc0, wc1))  # (3, h, w)
    h, w = wr1 - wr0, wc1 - wc0
    depth = np.full((h, w), np.inf)
    owner = np.full((h, w), -1, dtype=np.int32)
    for i, (prim, rect) in enumerate(zip(obj.primitives, rects)):
        if rect is None:
            continue
        r0, r1, c0, c1 = rect[0] - wr0, rect[1] - wr0, rect[2] - wc0, rect[3] - wc0
        t = prim.intersect(origin, dirs[:, r0:r1, c0:c1].reshape(3, -1)).reshape(r1 - r0, c1 - c0)
        closer = t < depth[r0:r1, c0:c1]
        depth[r0:r1, c0:c1][closer] = t[closer]
        owner[r0:r1, c0:c1][closer] = i
    rgb = np.zeros((h * w, 3))
    flat_owner, flat_depth, flat_dirs = owner.ravel(), depth.ravel(), dirs.reshape(3, -1)
    order = np.argsort(flat_owner, kind="stable")
    bounds = np.searchsorted(flat_owner[order], np.arange(len(obj.primitives) + 1))
    for i, prim in enumerate(obj.primitives):
        idx = order[bounds[i] : bounds[i + 1]]
        if idx.size:
            d = flat_dirs[:, idx].T
            points = origin + flat_depth[idx, None] * d
            rgb[idx] = np.asarray(prim.colour) * shade(prim.normal(points), d)[:, None]
    ph, pw = h // supersample, w // supersample
    hit = (owner >= 0).reshape(ph, supersample, pw, supersample)
    count = hit.sum(axis=(1, 3))
    colour = rgb.reshape(ph, supersample, pw, supersample, 3).sum(axis=(1, 3)) / np.maximum(count, 1)[..., None]
    win = out[wr0 // supersample : wr1 // supersample, wc0 // supersample : wc1 // supersample]
    win[..., :3] = np.round(np.clip(colour, 0.0, 1.0) * 255)
    win[..., 3] = np.round(count * (255.0 / supersample**2))
    return out

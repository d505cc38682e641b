"""The 3D-R2N2 rendering camera, and projection of voxel grids into its images.

Conventions (REFERENCE.md, checked against the real renderings in tests/test_camera.py):

- world frame = the ShapeNetVox32 frame after the binvox (x, z, y) -> (x, y, z) transpose; y is up;
- the voxel grid is a cube of side ``scale`` centred at the origin:
  voxel (i, j, k) centre = scale * ((idx + 0.5) / 32 - 0.5);
- camera position = d * (cos el cos az, sin el, cos el sin az), d = dist_ratio * 1.75, looking at the
  origin with y up;
- pinhole, focal length 35/32 * image size in pixels, principal point at the image centre;
  image rows go down, columns go right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# 3D-R2N2 (Choy et al. 2016, blender renderer): camera distance = 1.75 * dist_ratio
DISTANCE_SCALE = 1.75
# Blender's default 35 mm lens on a 32 mm sensor: focal length = 35/32 of the image width
FOCAL_OVER_WIDTH = 35.0 / 32.0
# ShapeNetRendering images are 137 x 137
RENDER_SIZE = 137
# rendering_metadata.txt ranges observed in ShapeNetRendering (REFERENCE.md)
AZIMUTH_RANGE = (0.0, 360.0)
ELEVATION_RANGE = (25.0, 30.0)
DIST_RATIO_RANGE = (0.65, 0.95)


@dataclass(frozen=True)
class View:
    """One R2N2 viewpoint: degrees, degrees, and the distance ratio of rendering_metadata.txt."""

    azimuth: float
    elevation: float
    dist_ratio: float

    @property
    def distance(self) -> float:
        return self.dist_ratio * DISTANCE_SCALE

    def position(self) -> np.ndarray:
        """Camera centre in world coordinates: (3,) float."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return self.distance * np.array([math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)])

    def rotation(self) -> np.ndarray:
        """World -> camera rotation: (3, 3), rows = camera right, up, forward in world coordinates."""
        forward = -self.position()
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return np.stack([right, up, forward])

    def metadata_line(self) -> str:
        """The rendering_metadata.txt line: ``azimuth elevation 0 dist_ratio 25`` (the 25 is unused)."""
        return f"{self.azimuth!r} {self.elevation!r} 0 {self.dist_ratio!r} 25"


def parse_metadata(text: str) -> list[View]:
    """Parse a rendering_metadata.txt: one ``azimuth elevation 0 dist_ratio 25`` line per view."""
    views = []
    for line in text.splitlines():
        fields = line.split()
        if fields:
            views.append(View(float(fields[0]), float(fields[1]), float(fields[3])))
    return views


def focal_length(image_size: int = RENDER_SIZE) -> float:
    """Focal length in pixels: 149.84 for a 137-pixel image."""
    return FOCAL_OVER_WIDTH * image_size


def project(points: np.ndarray, view: View, image_size: int = RENDER_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into the image.

    points: (N, 3) float world coordinates.
    Returns ``pixels: (N, 2)`` as (column, row) with (0, 0) the top-left pixel's corner, and
    ``depth: (N,)`` along the viewing direction.
    """
    cam = (np.asarray(points, dtype=np.float64) - view.position()) @ view.rotation().T
    depth = cam[:, 2]
    f, c = focal_length(image_size), image_size / 2.0
    col = c + f * cam[:, 0] / depth
    row = c - f * cam[:, 1] / depth
    return np.stack([col, row], axis=1), depth


def voxel_centres(shape: tuple[int, int, int], scale: float = 1.0) -> np.ndarray:
    """World coordinates of voxel centres: (D, H, W, 3), the grid a cube of side ``scale`` at the origin."""
    axes = [scale * ((np.arange(n) + 0.5) / n - 0.5) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def pixel_rays(view: View, image_size: int = RENDER_SIZE) -> np.ndarray:
    """Unit world-space directions of the rays through every pixel centre: (H, W, 3) float."""
    f, c = focal_length(image_size), image_size / 2.0
    centres = np.arange(image_size) + 0.5
    cols, rows = np.meshgrid(centres, centres)
    cam = np.stack([(cols - c) / f, -(rows - c) / f, np.ones_like(cols)], axis=-1)
    dirs = cam @ view.rotation()  # camera -> world (the rotation is orthonormal)
    return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def voxel_silhouette(
    voxels: np.ndarray, view: View, scale: float = 1.0, image_size: int = RENDER_SIZE, steps_per_voxel: int = 4
) -> np.ndarray:
    """Silhouette of the union of occupied voxel cubes: a pixel is in it when the ray through its
    centre meets an occupied voxel (found by marching the ray in steps of 1/``steps_per_voxel`` voxel).

    voxels: (D, D, D) bool in (x, y, z) order, the grid a cube of side ``scale`` at the origin.
    Returns ``mask: (image_size, image_size) bool``. Compared with alpha > 0 this reproduces the
    per-object silhouette IoUs of REFERENCE.md on the real ShapeNet sample to within 0.02.
    """
    voxels = np.asarray(voxels, dtype=bool)
    n = voxels.shape[0]
    if voxels.shape != (n, n, n):
        raise ValueError(f"voxel_silhouette needs a cubic grid, got {voxels.shape}")
    occupied = np.pad(voxels, 1)  # a border of empty voxels makes out-of-grid lookups safe
    dirs = pixel_rays(view, image_size)
    origin = view.position()
    half = scale * math.sqrt(3) / 2  # the grid's bounding sphere
    ts = np.arange(view.distance - half, view.distance + half, scale / n / steps_per_voxel)
    hit = np.zeros(dirs.shape[:2], dtype=bool)
    for t in ts:
        idx = np.floor(((origin + t * dirs) / scale + 0.5) * n).astype(np.int64) + 1
        np.clip(idx, 0, n + 1, out=idx)
        hit |= occupied[idx[..., 0], idx[..., 1], idx[..., 2]]
    return hit


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

"""Solid voxelisation of a union of primitives, the way binvox voxelises ShapeNet meshes.

binvox marks a voxel when the surface passes through it, then fills the inside, so a part thinner than
a voxel still occupies (at least) the voxels it touches. Here a voxel is occupied when a primitive
meets the voxel cube:

1. a voxel whose centre has ``sdf <= 0`` is inside: occupied;
2. a voxel whose centre has ``sdf > sqrt(3)/2 * voxel`` cannot meet the primitive (the cube lies in
   that ball): empty;
3. the voxels between are refined adaptively: a cell is split into 8 children; a child whose centre
   has ``sdf <= 0`` proves the voxel occupied, a child farther than its half-diagonal is dropped, the
   rest are split again, down to ``LEVELS`` halvings, where a child within its half-diagonal counts.
   With an exact distance (boxes, frustums) this never misses a touching primitive and over-fills only
   voxels that a primitive passes within ``(sqrt(3) - 1) / 2 / 2**LEVELS`` voxel of (0.023 for 4
   levels); a single ball test per voxel would flood a whole layer whenever a flat face lies just
   outside a voxel boundary.

Grid (ShapeNetVox32, REFERENCE.md): ``(n, n, n) bool`` in (x, y, z) order, y up, a cube of side
``scale`` centred at the origin, voxel (i, j, k) centre = scale * ((idx + 0.5) / n - 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from r2n2.data.synth.primitives import Primitive

GRID = 32  # ShapeNetVox32
LEVELS = 4  # halvings of a boundary voxel: cells down to 1/16 voxel


def _index_range(lo: float, hi: float, scale: float, n: int, margin: int = 1) -> slice:
    """The voxel indices along one axis whose cubes may meet [lo, hi] (plus ``margin`` voxels)."""
    a = math.floor((lo / scale + 0.5) * n) - margin
    b = math.floor((hi / scale + 0.5) * n) + margin + 1
    return slice(max(a, 0), min(b, n))


def _centres(scale: float, n: int, block: tuple[slice, slice, slice]) -> np.ndarray:
    """World coordinates of the voxel centres in ``block``: (a, b, c, 3)."""
    axes = [scale * ((np.arange(s.start, s.stop) + 0.5) / n - 0.5) for s in block]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _sub_offsets(voxel: float, k: int) -> np.ndarray:
    """Offsets of the k^3 sub-cube centres from a voxel centre: (k^3, 3)."""
    o = voxel * ((np.arange(k) + 0.5) / k - 0.5)
    return np.stack(np.meshgrid(o, o, o, indexing="ij"), axis=-1).reshape(-1, 3)


def _touches(prim: Primitive, centres: np.ndarray, voxel: float, levels: int) -> np.ndarray:
    """For boundary voxels ``centres: (M, 3)``: does ``prim`` meet each voxel cube? -> (M,) bool."""
    hit = np.zeros(len(centres), dtype=bool)
    cells, owner, size = centres, np.arange(len(centres)), voxel
    for level in range(1, levels + 1):
        size /= 2
        kids = (cells[:, None, :] + _sub_offsets(2 * size, 2)).reshape(-1, 3)
        owner = np.repeat(owner, 8)
        d = prim.sdf(kids)
        radius = size * math.sqrt(3) / 2
        hit[owner[d <= (radius if level == levels else 0.0)]] = True
        keep = (d > 0.0) & (d <= radius) & ~hit[owner]
        cells, owner = kids[keep], owner[keep]
        if not len(cells):
            break
    return hit


def voxelize(
    primitives: Sequence[Primitive], scale: float, n: int = GRID, levels: int = LEVELS, fill: bool = True
) -> np.ndarray:
    """Conservative solid voxelisation. Returns ``voxels: (n, n, n) bool`` in (x, y, z) order.

    ``fill`` closes enclosed cavities (binvox's solid fill), so the grid is solid like ShapeNetVox32.
    """
    voxel = scale / n
    occupied = np.zeros((n, n, n), dtype=bool)
    for prim in primitives:
        lo, hi = prim.aabb()
        block = tuple(_index_range(lo[a], hi[a], scale, n) for a in range(3))
        if any(s.stop <= s.start for s in block):
            continue
        pts = _centres(scale, n, block)
        d = prim.sdf(pts)
        part = d <= 0.0
        band = (d > 0.0) & (d <= voxel * math.sqrt(3) / 2) & ~occupied[block]
        if band.any():
            part[band] = _touches(prim, pts[band], voxel, levels)
        occupied[block] |= part
    return ndimage.binary_fill_holes(occupied) if fill else occupied


def reference_voxelize(primitives: Sequence[Primitive], scale: float, n: int = GRID, samples: int = 8) -> np.ndarray:
    """A slow reference for tests: a voxel is occupied when one of its ``samples^3`` regularly spaced
    interior points lies inside a primitive. It under-fills only parts thinner than ``1/samples`` voxel,
    so ``reference <= voxelize`` voxel-wise, and ``voxelize`` should not exceed it by much."""
    voxel = scale / n
    offsets = _sub_offsets(voxel, samples)
    occupied = np.zeros((n, n, n), dtype=bool)
    for prim in primitives:
        lo, hi = prim.aabb()
        block = tuple(_index_range(lo[a], hi[a], scale, n, margin=0) for a in range(3))
        pts = _centres(scale, n, block).reshape(-1, 3)
        hit = np.zeros(len(pts), dtype=bool)
        for start in range(0, len(pts), 2048):
            chunk = pts[start : start + 2048, None, :] + offsets
            hit[start : start + 2048] = (prim.sdf(chunk) <= 0.0).any(axis=1)
        occupied[block] |= hit.reshape(occupied[block].shape)
    return occupied

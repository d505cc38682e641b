"""F-score@1% of voxel grids (Pix2Vox++'s definition), and a fast way to compute many of them.

Definition (Pix2Vox++, after what3d): sample points uniformly on the surface of the predicted and of
the ground-truth grid; precision = share of predicted points within 1% of the grid side of a
ground-truth point, recall = the reverse; F = 2PR / (P + R). :func:`surface_points` and
:func:`fscore_points` are that definition, written plainly (the reference).

:class:`FScorer` computes exactly the same numbers, faster: a ground-truth object's surface points and
k-d tree are built once and reused for every prediction of it (all samples, all view counts, every
baseline), identical predicted grids are scored once, the nearest-neighbour queries stop at the
F-score distance (``distance_upper_bound``: the answer to "is a point within d" is unchanged), and the
work runs in a pool of processes beside the network. This module imports no torch, so the pool's
processes start fast.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

# Pix2Vox++ (after what3d): F-score at a distance of 1% of the (unit) grid side
FSCORE_DISTANCE = 0.01
FSCORE_POINTS = 8192
# the surface samples of the prediction and of the ground truth use these seeds (fixed: repeatable)
PRED_SEED, GT_SEED = 0, 1
# ground-truth surfaces (points + k-d tree, ~0.5 MB each) each pool process keeps
GT_CACHE = 256


def surface_points(grid: np.ndarray, n: int = FSCORE_POINTS, seed: int = 0) -> np.ndarray:
    """``n`` points drawn uniformly (by area) on the surface of ``grid: (R, R, R) bool``.

    As Pix2Vox++: pad by one empty voxel, marching cubes, vertices divided by R + 1 so the grid spans
    the unit cube. (We extract the 0.5 level set with scikit-image; Pix2Vox++'s PyMCubes call used
    level 0 on the binary grid, which shifts both surfaces half a voxel outward.)
    Returns ``(n, 3) float`` in [0, 1], or ``(0, 3)`` for an empty grid.
    """
    from skimage.measure import marching_cubes

    grid = np.asarray(grid, dtype=bool)
    if not grid.any():
        return np.zeros((0, 3))
    padded = np.pad(grid, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    verts = verts / (padded.shape[0] - 1)
    tri = verts[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1  # fold points of the parallelogram back into the triangle
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def fscore_points(pred: np.ndarray, gt: np.ndarray, distance: float = FSCORE_DISTANCE) -> float:
    """F-score of two point sets: precision = share of predicted points within ``distance`` of the
    ground truth, recall = the reverse; F = 2PR / (P + R). Both empty -> 1, one empty -> 0."""
    from scipy.spatial import cKDTree

    if len(pred) == 0 or len(gt) == 0:
        return float(len(pred) == len(gt))
    precision = float((cKDTree(gt).query(pred)[0] < distance).mean())
    recall = float((cKDTree(pred).query(gt)[0] < distance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def voxel_fscore(pred: np.ndarray, gt: np.ndarray, distance: float = FSCORE_DISTANCE, n: int = FSCORE_POINTS,
                 seed: int = 0) -> float:
    """F-score@``distance`` of two ``(R, R, R) bool`` grids (Pix2Vox++'s F-score@1% by default)."""
    return fscore_points(surface_points(pred, n, seed), surface_points(gt, n, seed + 1), distance)


# --- the fast path -----------------------------------------------------------------------------------


class _Surface:
    """A grid's surface points and their k-d tree (None for an empty grid)."""

    def __init__(self, grid: np.ndarray, n: int, seed: int):
        from scipy.spatial import cKDTree

        self.points = surface_points(grid, n, seed)
        # unbalanced, uncompacted trees build ~2x faster; a nearest-neighbour answer does not change
        self.tree = cKDTree(self.points, balanced_tree=False, compact_nodes=False) if len(self.points) else None

    def within(self, other: "_Surface", distance: float) -> float:
        """Share of ``other``'s points within ``distance`` of this surface."""
        d = self.tree.query(other.points, distance_upper_bound=distance)[0]  # inf beyond the bound
        return float((d < distance).mean())


def _fscore(pred: _Surface, gt: _Surface, distance: float) -> float:
    """:func:`fscore_points` of two prepared surfaces (the same arithmetic)."""
    if pred.tree is None or gt.tree is None:
        return float((pred.tree is None) == (gt.tree is None))
    precision, recall = gt.within(pred, distance), pred.within(gt, distance)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


_GT: OrderedDict = OrderedDict()  # per process: ground-truth key -> _Surface, least recently used first


def _gt_surface(key, bits: np.ndarray, shape: tuple, n: int) -> _Surface:
    if key in _GT:
        _GT.move_to_end(key)
        return _GT[key]
    surface = _GT[key] = _Surface(_unpack(bits, shape), n, GT_SEED)
    while len(_GT) > GT_CACHE:
        _GT.popitem(last=False)
    return surface


def _unpack(bits: np.ndarray, shape: tuple) -> np.ndarray:
    return np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(bool)


def score_packed(gt_keys: list, gt_bits: np.ndarray, pred_bits: np.ndarray, shape: tuple,
                 n: int = FSCORE_POINTS, distance: float = FSCORE_DISTANCE) -> np.ndarray:
    """F-scores of K (prediction, ground truth) pairs of bit-packed grids: ``(K,) float64``.

    gt_keys: K hashable ids of the ground-truth grids (equal id = equal grid; its surface is cached);
    gt_bits, pred_bits: ``(K, ceil(prod(shape) / 8)) uint8`` (``np.packbits`` of the flattened grids).
    Equal predictions of the same ground truth are scored once.
    """
    out = np.empty(len(gt_keys))
    done: dict = {}
    for i, key in enumerate(gt_keys):
        pair = (key, pred_bits[i].tobytes())
        if pair not in done:
            gt = _gt_surface(key, gt_bits[i], shape, n)
            done[pair] = _fscore(_Surface(_unpack(pred_bits[i], shape), n, PRED_SEED), gt, distance)
        out[i] = done[pair]
    return out


class FScorer:
    """F-scores computed in a pool of ``workers`` processes while the caller goes on (0 = inline).

    ``submit(gt_keys, gt_grids, pred_grids) -> Future`` of ``(K,)`` F-scores; grids ``(K, R, R, R)``
    bool (numpy). Use as a context manager so the pool is shut down.
    """

    def __init__(self, workers: int | None = None, n: int = FSCORE_POINTS, distance: float = FSCORE_DISTANCE):
        self.workers = (os.cpu_count() or 1) if workers is None else int(workers)
        self.n, self.distance = int(n), float(distance)
        self.pool = None
        if self.workers > 0:
            # fork (Linux): a spawned process would re-import the caller's main module (torch, Lightning:
            # seconds per process); the workers run only numpy, scipy and scikit-image, never torch
            context = get_context("fork" if sys.platform == "linux" else "spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self.pool.submit(int).result()  # start the processes now, before the caller's threads do work

    def submit(self, gt_keys, gt_grids: np.ndarray, pred_grids: np.ndarray) -> Future:
        shape = tuple(pred_grids.shape[1:])
        args = (list(gt_keys), np.packbits(gt_grids.reshape(len(gt_grids), -1), axis=1),
                np.packbits(pred_grids.reshape(len(pred_grids), -1), axis=1), shape, self.n, self.distance)
        if self.pool is None:
            future: Future = Future()
            future.set_result(score_packed(*args))
            return future
        return self.pool.submit(score_packed, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> "FScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

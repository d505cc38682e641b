"""F-score@1% of voxel grids (Pix2Vox++'s definition, which is what3d's), and a fast way to compute many.

Definition (what3d, Tatarchenko et al. 2019, adopted by Pix2Vox++): turn the predicted and the
ground-truth grid into meshes, sample points uniformly (by area) on each; precision = share of
predicted points closer than 1% of the grid side to a ground-truth point, recall = the reverse;
F = 2PR / (P + R). The points are in the unit cube at any resolution R, so the radius is 1% of the
grid side at 32^3 (0.32 voxel), 64^3 (0.64 voxel) and 128^3 alike. :func:`surface_points` and
:func:`fscore_points` are that definition, written plainly (the reference). Two surfaces can be
chosen (``level``, :data:`LEVELS`):

- ``"what3d"`` (the default): what3d's own mesh, PyMCubes' level-0 surface of the binary grid padded
  by one empty voxel (it runs through the centres of the empty voxels next to the filled ones: half a
  voxel outside the filled cells);
- ``"half"``: scikit-image's 0.5 level set (halfway between filled and empty voxel centres), the
  definition this project used before (its published figures).

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
# the surface each grid is meshed as: name -> marching-cubes level (see the module docstring)
# what3d (github.com/lmb-freiburg/what3d, util.py voxel_grid_to_mesh, commit a182b68):
#   mcubes.marching_cubes(padded_grid, 0), vertices / (padded side - 1)
LEVELS = {"what3d": 0.0, "half": 0.5}
DEFAULT_LEVEL = "what3d"
# the surface samples of the prediction and of the ground truth use these seeds (fixed: repeatable)
PRED_SEED, GT_SEED = 0, 1
# ground-truth surfaces (points + k-d tree, ~0.5 MB each) each pool process keeps
GT_CACHE = 256


def surface_points(grid: np.ndarray, n: int = FSCORE_POINTS, seed: int = 0, level: str = DEFAULT_LEVEL) -> np.ndarray:
    """``n`` points drawn uniformly (by area) on the surface of ``grid: (R, R, R) bool``.

    As what3d (``voxel_grid_to_mesh``): pad by one empty voxel, marching cubes, vertices divided by
    the padded side - 1 (R + 1) so the padded grid spans the unit cube. ``level`` (:data:`LEVELS`):
    ``"what3d"`` runs PyMCubes at level 0 on the padded binary grid, what3d's call (its surface
    passes through the empty voxel centres beside the filled ones; scikit-image at level 0 resolves a
    few ambiguous cubes differently, so it is not used for it); ``"half"`` runs scikit-image at 0.5.
    Points: a triangle drawn with probability proportional to its area (the level-0 mesh's many
    zero-area triangles are never drawn), then a uniform point in it (what3d samples with Open3D's
    ``sample_points_uniformly``, the same distribution). Returns ``(n, 3) float`` in [0, 1], or
    ``(0, 3)`` for an empty grid.
    """
    grid = np.asarray(grid, dtype=bool)
    if level not in LEVELS:
        raise ValueError(f"F-score level {level!r}: expected one of {sorted(LEVELS)}")
    if not grid.any():
        return np.zeros((0, 3))
    padded = np.pad(grid, 1)
    if level == "what3d":
        import mcubes

        verts, faces = mcubes.marching_cubes(padded.astype(np.float64), LEVELS[level])
        faces = faces.astype(np.intp)
    else:
        from skimage.measure import marching_cubes

        verts, faces, _, _ = marching_cubes(padded.astype(np.float32), level=LEVELS[level])
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
    """F-score of two point sets ``(N, 3)``, ``(M, 3)``: precision = share of predicted points closer
    than ``distance`` to the ground truth (strictly: what3d's ``d < th``), recall = the reverse;
    F = 2PR / (P + R). Both empty -> 1, one empty -> 0 (what3d gives 0 for both empty; no real
    ground truth is empty)."""
    from scipy.spatial import cKDTree

    if len(pred) == 0 or len(gt) == 0:
        return float(len(pred) == len(gt))
    precision = float((cKDTree(gt).query(pred)[0] < distance).mean())
    recall = float((cKDTree(pred).query(gt)[0] < distance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def voxel_fscore(
    pred: np.ndarray,
    gt: np.ndarray,
    distance: float = FSCORE_DISTANCE,
    n: int = FSCORE_POINTS,
    seed: int = 0,
    level: str = DEFAULT_LEVEL,
) -> float:
    """F-score@``distance`` of two ``(R, R, R) bool`` grids (Pix2Vox++'s F-score@1% by default)."""
    return fscore_points(surface_points(pred, n, seed, level), surface_points(gt, n, seed + 1, level), distance)


# --- the fast path -----------------------------------------------------------------------------------


class _Surface:
    """A grid's surface points and their k-d tree (None for an empty grid)."""

    def __init__(self, grid: np.ndarray, n: int, seed: int, level: str):
        from scipy.spatial import cKDTree

        self.points = surface_points(grid, n, seed, level)
        # unbalanced, uncompacted trees build ~2x faster; a nearest-neighbour answer does not change
        self.tree = cKDTree(self.points, balanced_tree=False, compact_nodes=False) if len(self.points) else None

    def within(self, other: _Surface, distance: float) -> float:
        """Share of ``other``'s points within ``distance`` of this surface."""
        d = self.tree.query(other.points, distance_upper_bound=distance)[0]  # inf beyond the bound
        return float((d < distance).mean())


def _fscore(pred: _Surface, gt: _Surface, distance: float) -> float:
    """:func:`fscore_points` of two prepared surfaces (the same arithmetic)."""
    if pred.tree is None or gt.tree is None:
        return float((pred.tree is None) == (gt.tree is None))
    precision, recall = gt.within(pred, distance), pred.within(gt, distance)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# per process: ground-truth content key -> _Surface, least recently used first. Keyed by the grid's
# bits (and shape, points, level), never by the caller's id, so one evaluation's surfaces cannot serve
# another's grids (a forked pool process inherits its parent's cache: content keys keep that correct)
_GT: OrderedDict = OrderedDict()


def _gt_surface(bits: np.ndarray, shape: tuple, n: int, level: str) -> _Surface:
    key = (bits.tobytes(), shape, n, level)
    if key in _GT:
        _GT.move_to_end(key)
        return _GT[key]
    surface = _GT[key] = _Surface(_unpack(bits, shape), n, GT_SEED, level)
    while len(_GT) > GT_CACHE:
        _GT.popitem(last=False)
    return surface


def _unpack(bits: np.ndarray, shape: tuple) -> np.ndarray:
    return np.unpackbits(bits)[: int(np.prod(shape))].reshape(shape).astype(bool)


def score_packed(
    gt_keys: list,
    gt_bits: np.ndarray,
    pred_bits: np.ndarray,
    shape: tuple,
    n: int = FSCORE_POINTS,
    distance: float = FSCORE_DISTANCE,
    level: str = DEFAULT_LEVEL,
) -> np.ndarray:
    """F-scores of K (prediction, ground truth) pairs of bit-packed grids: ``(K,) float64``.

    gt_keys: K ids of the ground-truth grids (kept for the callers; surfaces are cached by the grids'
    bits, so a reused id cannot serve another grid's surface); gt_bits, pred_bits:
    ``(K, ceil(prod(shape) / 8)) uint8`` (``np.packbits`` of the flattened grids); level: see
    :data:`LEVELS`. Equal predictions of the same ground truth are scored once.
    """
    if level not in LEVELS:
        raise ValueError(f"F-score level {level!r}: expected one of {sorted(LEVELS)}")
    out = np.empty(len(gt_keys))
    done: dict = {}
    for i in range(len(gt_keys)):
        pair = (gt_bits[i].tobytes(), pred_bits[i].tobytes())
        if pair not in done:
            gt = _gt_surface(gt_bits[i], shape, n, level)
            done[pair] = _fscore(_Surface(_unpack(pred_bits[i], shape), n, PRED_SEED, level), gt, distance)
        out[i] = done[pair]
    return out


def _numpy(grids) -> np.ndarray:
    """A numpy array of ``grids`` (a torch tensor on any device, without importing torch here)."""
    return grids.cpu().numpy() if hasattr(grids, "cpu") else np.asarray(grids)


class FScorer:
    """F-scores computed in a pool of ``workers`` processes while the caller goes on (0 = inline).

    ``submit(gt_keys, gt_grids, pred_grids) -> Future`` of ``(K,)`` F-scores; grids ``(K, R, R, R)``
    bool (numpy, or torch tensors on any device); ``level``: the surface definition (:data:`LEVELS`;
    ``"what3d"`` by default). Use as a context manager so the pool is shut down.
    """

    def __init__(
        self,
        workers: int | None = None,
        n: int = FSCORE_POINTS,
        distance: float = FSCORE_DISTANCE,
        level: str = DEFAULT_LEVEL,
    ):
        if level not in LEVELS:
            raise ValueError(f"fscore.level={level!r}: expected one of {sorted(LEVELS)}")
        self.workers = (os.cpu_count() or 1) if workers is None else int(workers)
        self.n, self.distance, self.level = int(n), float(distance), str(level)
        self.pool = None
        if self.workers > 0:
            # fork (Linux): a spawned process would re-import the caller's main module (torch, Lightning:
            # seconds per process); the workers run only numpy, scipy, PyMCubes and scikit-image, never torch
            context = get_context("fork" if sys.platform == "linux" else "spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self.pool.submit(int).result()  # start the processes now, before the caller's threads do work

    def submit(self, gt_keys, gt_grids: np.ndarray, pred_grids: np.ndarray) -> Future:
        gt_grids, pred_grids = _numpy(gt_grids), _numpy(pred_grids)
        shape = tuple(pred_grids.shape[1:])
        args = (
            list(gt_keys),
            np.packbits(gt_grids.reshape(len(gt_grids), -1), axis=1),
            np.packbits(pred_grids.reshape(len(pred_grids), -1), axis=1),
            shape,
            self.n,
            self.distance,
            self.level,
        )
        if self.pool is None:
            future: Future = Future()
            future.set_result(score_packed(*args))
            return future
        return self.pool.submit(score_packed, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> FScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

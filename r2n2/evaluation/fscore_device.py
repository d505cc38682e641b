"""F-score@1% of many grids at once with torch, on the evaluation's device (1.3M F-scores for
ShapeNet's test split; a CPU process spends 10-17 ms on one, so 15 of them take 15-25 minutes).

The same figures as :mod:`r2n2.evaluation.fscore` (the reference, PyMCubes + numpy + scipy), computed otherwise:

- the mesh: PyMCubes on a padded binary grid at level 0 puts every vertex on the empty corner of a
  cube edge, so its triangles are, cube by cube in (x, y, z) order, a table lookup of the cube's 8
  corners: :func:`cube_table` reads that table off PyMCubes itself (one 2 x 2 x 2 grid per corner
  pattern) and :func:`surface_samples` lays it over all cubes of a batch of grids at once;
- the points: ``surface_points`` draws ``rng.choice(len(tri), n, p=area / area.sum())`` then
  ``rng.random((2, n))`` from a fresh ``default_rng(seed)``; numpy's ``choice`` with ``p`` is the
  cumulative sum, one ``random(n)`` and ``searchsorted(side="right")``, so the uniforms are the same
  for every grid (:func:`uniforms`) and only the areas differ: the same float64 operations give the
  same points (a cumulative sum summed in another order could move a point to the next triangle
  only if a uniform fell within ~1e-16 of a boundary);
- the neighbours: points within the F-score distance d of each other lie in neighbouring cells of a
  grid of side d, so each point is compared with the points of its 27 cells only (sorted cell keys and
  binary search instead of a k-d tree), ``sqrt(dx^2 + dy^2 + dz^2) < d`` in float64 as scipy's (a
  pair could be missed only where x / d rounds across a whole number and the pair is d apart to the
  last bits: never in the tests).

``tests/test_fscore.py`` checks the points equal ``surface_points``' and the F-scores equal
:class:`r2n2.evaluation.fscore.FScorer`'s on real grids and a real network's predictions, on the CPU.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np
import torch

from r2n2.evaluation.fscore import DEFAULT_LEVEL, FSCORE_DISTANCE, FSCORE_POINTS, GT_SEED, PRED_SEED

# PyMCubes' corner order in a cube (mcubes/src/marchingcubes.h, marching_cubes: v[0..7])
CORNERS = ((0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))
MAX_TRIANGLES = 5  # per cube, in the marching-cubes table
# ground-truth surfaces kept on the device (8,192 float64 points: 196 KB each): ShapeNet's 8.8k test objects
GT_CACHE = 16384
# query points looked up at once in :func:`share_within`, and candidate pairs compared at once (a tiny
# predicted object puts all 8,192 of its points in a few cells: each query then has thousands)
QUERY_CHUNK, CANDIDATES = 1 << 18, 1 << 24
# pairs computed at once: ~1 GB of device memory (a (K, n, 3, 3) float64 gather of triangles, 8,192 points)
BATCH = 512


@functools.cache
def cube_table() -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes' triangles of one cube at level 0 for each of the 256 patterns of empty corners
    (bit m set: corner m is empty, value 0 <= level): counts ``(256,)`` and the corner offsets of each
    triangle's vertices in PyMCubes' order, ``(256, MAX_TRIANGLES, 3, 3)`` int64."""
    import mcubes

    counts = np.zeros(256, np.int64)
    corners = np.zeros((256, MAX_TRIANGLES, 3, 3), np.int64)
    for pattern in range(256):
        cube = np.ones((2, 2, 2))
        for m, xyz in enumerate(CORNERS):
            if pattern >> m & 1:
                cube[xyz] = 0.0
        verts, faces = mcubes.marching_cubes(cube, 0.0)
        counts[pattern] = len(faces)
        corners[pattern, : len(faces)] = verts[faces.astype(np.intp)].round().astype(np.int64)
    return counts, corners


@functools.lru_cache(maxsize=8)
def uniforms(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The draws of ``surface_points(..., n, seed)``: ``choice``'s n uniforms, then u and v (n each)."""
    rng = np.random.default_rng(seed)
    pick = rng.random(n)  # Generator.choice(a, n, p=p): cdf.searchsorted(self.random(n), side="right")
    u, v = rng.random((2, n))
    return pick, u, v


def _table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    counts, corners = cube_table()
    return torch.from_numpy(counts).to(device), torch.from_numpy(corners).to(device)


def surface_samples(grids: torch.Tensor, n: int = FSCORE_POINTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``surface_points(grid, n, seed)`` (level "what3d") of each of ``grids (K, R, R, R) bool``, on
    their device: points ``(K, n, 3) float64`` and ``empty (K,) bool`` (an empty grid's rows are 0)."""
    device, k, r = grids.device, grids.shape[0], grids.shape[1]
    counts, corners = _table(device)
    empty = ~grids.flatten(1).any(1)
    hollow = torch.nn.functional.pad(~grids, (1, 1, 1, 1, 1, 1), value=True)  # padded, True = empty (value 0)
    pattern = torch.zeros(k, r + 1, r + 1, r + 1, dtype=torch.int64, device=device)
    for m, (x, y, z) in enumerate(CORNERS):
        pattern |= hollow[:, x : x + r + 1, y : y + r + 1, z : z + r + 1].long() << m
    cubes = (counts[pattern] > 0).nonzero()  # (C, 4): grid, x, y, z in PyMCubes' loop order per grid
    per_cube = counts[pattern[cubes[:, 0], cubes[:, 1], cubes[:, 2], cubes[:, 3]]]
    cube_of = torch.repeat_interleave(torch.arange(len(cubes), device=device), per_cube)
    first = torch.cumsum(per_cube, 0) - per_cube
    slot = torch.arange(len(cube_of), device=device) - first[cube_of]
    c = cubes[cube_of]
    tri = (corners[pattern[c[:, 0], c[:, 1], c[:, 2], c[:, 3]], slot] + c[:, None, 1:]).double() / (r + 1)  # (T, 3, 3)
    a, b = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    cross = torch.stack(
        [
            a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
            a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0],
        ],
        1,
    )  # numpy.cross's products and order
    area = 0.5 * torch.sqrt(cross[:, 0] * cross[:, 0] + cross[:, 1] * cross[:, 1] + cross[:, 2] * cross[:, 2])
    pick, u, v = (torch.from_numpy(x).to(device) for x in uniforms(seed, n))
    flip = u + v > 1  # fold points of the parallelogram back into the triangle
    u, v = torch.where(flip, 1 - u, u)[:, None], torch.where(flip, 1 - v, v)[:, None]
    # each grid's triangles as one row of a zero-padded (K, L) table: the cumulative sum of a row is
    # the grid's own (zeros after its last triangle add nothing), so every grid draws as numpy would
    grid_of = cubes[cube_of, 0]
    count = torch.bincount(grid_of, minlength=k)
    start = torch.cumsum(count, 0) - count
    if len(tri) == 0:
        return torch.zeros(k, n, 3, dtype=torch.float64, device=device), empty
    share = torch.zeros(k, int(count.max()), dtype=torch.float64, device=device)
    share[grid_of, torch.arange(len(tri), device=device) - start[grid_of]] = area
    share /= share.sum(1, keepdim=True).clamp(min=1e-300)  # p = area / area.sum()
    cdf = torch.cumsum(share, 1)
    cdf /= cdf[:, -1:].clone()
    drawn = torch.searchsorted(cdf, pick.expand(k, n).contiguous(), right=True)
    t = tri[(start[:, None] + torch.minimum(drawn, (count[:, None] - 1).clamp(min=0))).clamp(max=len(tri) - 1)]
    points = t[..., 0, :] + u * (t[..., 1, :] - t[..., 0, :]) + v * (t[..., 2, :] - t[..., 0, :])  # (K, n, 3)
    return torch.where(empty[:, None, None], torch.zeros_like(points), points), empty


def share_within(query: torch.Tensor, data: torch.Tensor, distance: float = FSCORE_DISTANCE) -> torch.Tensor:
    """Share of each row's query points closer than ``distance`` to one of its data points (strictly,
    as what3d): ``query (K, n, 3)``, ``data (K, m, 3)`` float64 in [0, 1] -> ``(K,) float64``."""
    k, n, m = query.shape[0], query.shape[1], data.shape[1]
    device, side = query.device, int(np.ceil(1 / distance)) + 3  # cells per axis, a spare at each end

    def keys(points: torch.Tensor) -> torch.Tensor:  # (K, P, 3) -> (K, P) cell keys, one range per row
        cell = torch.floor(points / distance).long().clamp(-1, side - 3) + 1
        grid = torch.arange(k, device=device)[:, None]
        return ((grid * side + cell[..., 0]) * side + cell[..., 1]) * side + cell[..., 2]

    data_keys, order = keys(data).flatten().sort()
    flat_data = data.reshape(-1, 3)[order]
    flat_query, query_keys = query.reshape(-1, 3), keys(query).flatten()
    found = torch.zeros(k * n, dtype=torch.bool, device=device)
    offsets = torch.tensor(
        [(dx * side + dy) * side + dz for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)], device=device
    )
    for start in range(0, k * n, QUERY_CHUNK):
        q = torch.arange(start, min(start + QUERY_CHUNK, k * n), device=device)
        near = query_keys[q, None] + offsets  # (Q, 27) neighbouring cells
        lo = torch.searchsorted(data_keys, near)
        hits = torch.searchsorted(data_keys, near, right=True) - lo
        ends = torch.cumsum(hits.sum(1), 0)  # candidates up to each query: split into bounded pieces
        a = 0
        while a < len(q):
            limit = (int(ends[a - 1]) if a else 0) + CANDIDATES
            b = max(a + 1, int(torch.searchsorted(ends, limit, right=True)))
            _mark_close(flat_query, q[a:b], flat_data, lo[a:b], hits[a:b], distance, found)
            a = b
    return found.view(k, n).double().mean(1) if m else torch.zeros(k, dtype=torch.float64, device=device)


def _mark_close(
    points: torch.Tensor,
    q: torch.Tensor,
    data: torch.Tensor,
    lo: torch.Tensor,
    hits: torch.Tensor,
    distance: float,
    found: torch.Tensor,
) -> None:
    """Set ``found[q[i]]`` where a data point of query i's cells (sorted rows ``lo[i, c]`` to
    ``lo[i, c] + hits[i, c]`` of ``data``) lies closer than ``distance`` to ``points[q[i]]``."""
    device = q.device
    which = torch.repeat_interleave(torch.arange(hits.numel(), device=device), hits.flatten())
    rank = torch.arange(len(which), device=device) - (torch.cumsum(hits.flatten(), 0) - hits.flatten())[which]
    other = data[lo.flatten()[which] + rank]
    asker = q[which // hits.shape[1]]
    diff = points[asker] - other
    close = torch.sqrt(diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1] + diff[:, 2] * diff[:, 2]) < distance
    found[asker[close]] = True


def fscores(
    pred: torch.Tensor,
    pred_empty: torch.Tensor,
    gt: torch.Tensor,
    gt_empty: torch.Tensor,
    distance: float = FSCORE_DISTANCE,
) -> torch.Tensor:
    """F = 2PR / (P + R) of K pairs of surface samples ``(K, n, 3)`` (``empty (K,)``: no surface):
    ``(K,) float64``, both empty 1, one empty 0 (:func:`r2n2.evaluation.fscore.fscore_points`)."""
    precision, recall = share_within(pred, gt, distance), share_within(gt, pred, distance)
    f = torch.where(
        precision + recall == 0,
        torch.zeros_like(precision),
        2 * precision * recall / (precision + recall).clamp(min=1e-300),
    )
    return torch.where(pred_empty | gt_empty, (pred_empty == gt_empty).double(), f)


class _Deferred(Future):
    """A Future of :class:`DeviceFScorer` whose ``result()`` first computes what is still queued."""

    def __init__(self, scorer: DeviceFScorer):
        super().__init__()
        self.scorer = scorer

    def result(self, timeout=None):
        if not self.done():
            self.scorer.flush()
        return super().result(timeout)


class DeviceFScorer:
    """:class:`r2n2.evaluation.fscore.FScorer`'s interface, computed on ``device`` (level "what3d" only), many
    pairs at once: ``submit(gt_keys, gt_grids, pred_grids) -> Future`` of ``(K,)`` F-scores (numpy),
    grids ``(K, R, R, R)`` bool (tensors or arrays); submissions are queued until :data:`BATCH` pairs
    (or a result) are waiting, so the device works on large batches. Ground-truth surfaces are kept
    on the device by content (the grid's bits), as the pool's are."""

    workers = 0

    def __init__(
        self,
        device: torch.device | str,
        n: int = FSCORE_POINTS,
        distance: float = FSCORE_DISTANCE,
        level: str = DEFAULT_LEVEL,
    ):
        if level != "what3d":
            raise ValueError(f"fscore.level={level!r}: the device F-score computes what3d's level only")
        self.device, self.n, self.distance, self.level = torch.device(device), int(n), float(distance), level
        self.gts: OrderedDict = OrderedDict()
        self.queue: list[tuple[torch.Tensor, torch.Tensor, Future]] = []

    def _gt(self, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [b.tobytes() for b in np.packbits(grids.flatten(1).cpu().numpy(), axis=1)]
        fresh = sorted({keys.index(key) for key in keys if key not in self.gts})  # a row of each new grid
        if fresh:
            points, empty = surface_samples(grids[fresh], self.n, GT_SEED)
            for j, i in enumerate(fresh):
                self.gts[keys[i]] = (points[j], empty[j])
        out = []
        for key in keys:
            self.gts.move_to_end(key)
            out.append(self.gts[key])
        while len(self.gts) > GT_CACHE:
            self.gts.popitem(last=False)
        return torch.stack([p for p, _ in out]), torch.stack([e for _, e in out])

    def submit(self, gt_keys, gt_grids, pred_grids) -> Future:
        future = _Deferred(self)
        self.queue.append(
            (torch.as_tensor(gt_grids).to(self.device), torch.as_tensor(pred_grids).to(self.device), future)
        )
        if sum(len(g) for g, _, _ in self.queue) >= BATCH:
            self.flush()
        return future

    @torch.no_grad()
    def flush(self) -> None:
        """Compute every queued pair, :data:`BATCH` at a time, and complete their Futures."""
        queue, self.queue = self.queue, []
        while queue:
            take, size = [], 0
            while queue and (not take or size + len(queue[0][0]) <= BATCH):
                take.append(queue.pop(0))
                size += len(take[-1][0])
            gt, gt_empty = self._gt(torch.cat([g for g, _, _ in take]))
            pred, pred_empty = surface_samples(torch.cat([p for _, p, _ in take]), self.n, PRED_SEED)
            scores = fscores(pred, pred_empty, gt, gt_empty, self.distance).cpu().numpy()
            at = 0
            for g, _, future in take:
                future.set_result(scores[at : at + len(g)])
                at += len(g)

    def close(self) -> None:
        self.queue.clear()
        self.gts.clear()

    def __enter__(self) -> DeviceFScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Score a network (or any per-sample prediction) on evaluation samples, streaming: per-sample IoU
at many thresholds and F-score@1%, without keeping the probabilities.

Fast, with the same figures as scoring every view count separately:

- each distinct stored image is encoded once (the samples of an object share its renderings,
  so protocol=ours encodes as many images as it has samples, not samples x views), in chunks of
  ``batch_size`` in the order the samples first use them (:class:`EncodedViews`); the network is then
  re-run from the encoded views for 1..V views (:class:`SharedEncoder`), one batch of samples at a
  time as before, checked against the plain forward on the first samples; a network it does not fit
  is run once per view count instead;
- IoU is thresholded on the device in float32 (never float16: p = 0.29995 would round to 0.30005), at
  every threshold by one histogram (:func:`iou_at_thresholds`, the same counts);
- F-scores run in a process pool beside the network (:class:`r2n2.evaluation.fscore.FScorer`), ground-truth
  surfaces computed once per object, constant and retrieved predictions scored once per distinct
  (prediction, object) pair, in chunks (:func:`score_indexed`);
- one progress bar (:class:`Progress`) over every pass of an evaluation, with the time left.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from r2n2.data.dataset import PackedDataset
from r2n2.data.transforms import to_images
from r2n2.evaluation.baselines import object_occupancy
from r2n2.evaluation.fscore import FScorer
from r2n2.evaluation.fscore_device import DeviceFScorer

log = logging.getLogger(__name__)


@dataclass
class Samples:
    """The evaluated samples of one split and the images each one sees.

    dataset: the split (opened with every view of its objects when more than one view is used).
    rows: (N,) int, indices into ``dataset.samples``; obj: (N,) int, their objects.
    slots: (N, V) int, stored-image indices in view order: with v views a sample sees ``slots[:, :v]``.
    binary_alpha: composite as 3D-R2N2 (lib/data_augmentation.py ``add_random_color_background``):
        only fully transparent pixels (alpha 0) take the background, every other pixel keeps its own
        colour; False blends by alpha (the project's training and evaluation input).
    """

    dataset: PackedDataset
    rows: np.ndarray
    obj: np.ndarray
    slots: np.ndarray
    binary_alpha: bool = False

    @property
    def category(self) -> np.ndarray:
        """(N,) category names."""
        return np.array([self.dataset.objects[o]["category"] for o in self.obj])

    def __len__(self) -> int:
        return len(self.rows)

    def images(self, slots: np.ndarray) -> torch.Tensor:
        """Stored images ``slots (n,)`` as this protocol composites them: (n, S, S, 4) uint8."""
        rgba = torch.from_numpy(self.dataset.images(slots))
        if self.binary_alpha:
            rgba[..., 3] = torch.where(rgba[..., 3] > 0, 255, 0).to(torch.uint8)
        return rgba

    def rgba(self, index: np.ndarray, views: int) -> torch.Tensor:
        """The images of samples ``index``: (len(index), views, S, S, 4) uint8."""
        s = self.slots[index, :views]
        img = self.images(s.ravel())
        return img.view(*s.shape, *img.shape[1:])


def all_samples(dataset: PackedDataset, views: int) -> Samples:
    """Every sample of the split; with v views a sample sees its own view and v - 1 other views of
    its object, fixed per sample (``PackedDataset.view_slots``: the v-view list is a prefix of the
    V-view list)."""
    rows = np.arange(len(dataset))
    slots = np.stack([dataset.view_slots(int(i))[:views] for i in rows]) if len(rows) else np.zeros((0, views), int)
    return Samples(dataset, rows, dataset.samples[:, 0].copy(), slots)


def _first_sample_of_each_object(dataset: PackedDataset) -> tuple[np.ndarray, np.ndarray]:
    """The objects that have samples, sorted, and the row of each one's first sample: (O,), (O,) int.
    One sort of the samples (a scan per object was O(objects x samples): hours at ShapeNet's size)."""
    objects, rows = np.unique(dataset.samples[:, 0], return_index=True)
    return objects, rows.astype(np.int64)


def first_views(dataset: PackedDataset, views: int, binary_alpha: bool = False) -> Samples:
    """One sample per object seeing its first ``views`` renderings (00, 01, ...): Pix2Vox's test code
    (utils/data_loaders.py at 0596d5e) and 3D-R2N2's first commit (014e74c). Needs a dataset holding
    every view of its objects."""
    objects, rows = _first_sample_of_each_object(dataset)
    slots = dataset.first[objects, None] + np.arange(views)[None, :]
    return Samples(dataset, rows, objects, slots, binary_alpha)


def random_views(dataset: PackedDataset, views: int, seed: int = 0, binary_alpha: bool = False) -> Samples:
    """One sample per object seeing ``views`` renderings drawn at random *with replacement* from all
    of its renderings: the test code of 3D-R2N2 from its refactoring (ba1a949) to HEAD (13a30e2),
    lib/data_process.py ``np.random.choice(cfg.TRAIN.NUM_RENDERING, curr_n_views)``.

    Each object's draw comes from ``(seed, crc32(object id))``, so it is repeatable and does not
    depend on which other objects are listed. Draws are i.i.d., so the first v of an object's V draws
    are distributed as a v-view draw: one draw of ``views`` serves every smaller view count.
    Returns slots ``(N, views)`` into the stored images.
    """
    objects, rows = _first_sample_of_each_object(dataset)
    draws = [
        np.random.default_rng([seed, zlib.crc32(dataset.objects[o]["id"].encode())]).integers(
            0, dataset.count[o], views
        )
        for o in objects
    ]
    slots = dataset.first[objects, None] + (np.stack(draws) if draws else np.zeros((0, views), np.int64))
    return Samples(dataset, rows, objects, slots, binary_alpha)


class SharedEncoder(nn.Module):
    """Stands in for ``net.encoder`` and returns views encoded before: ``features (B, V, F)``.

    The seed model and R2N2 run ``encoder(images.flatten(0, 1))`` per view, then the recurrent
    part over the views in order; so the prediction from the first v views needs only the first v
    encoded views. Called with ``(B * v, ...)`` it returns ``features[:, :v]`` flattened.
    """

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.features.shape[0]
        return self.features[:, : x.shape[0] // b].flatten(0, 1)


class ViewCounts:
    """Probabilities of ``net`` for each view count in ``views`` from one batch of images."""

    def __init__(self, net: nn.Module, views: list[int], autocast_dtype: torch.dtype | None):
        self.net, self.views, self.dtype = net, sorted(views), autocast_dtype
        self.shared = isinstance(getattr(net, "encoder", None), nn.Module)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return torch.sigmoid(self.net(images).float())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: (n, 3, S, S) float -> the encoder's features, (n, F)."""
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.net.encoder(images).flatten(1)

    def decode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """features: (B, V, F) encoded views, V >= max(views) -> {v: probabilities (B, R, R, R) float32}."""
        b = features.shape[0]
        encoder = self.net.encoder
        try:
            self.net.encoder = SharedEncoder(features)
            stub = torch.empty(b, 1, 1, 1, 1, device=features.device)  # only its shape is read
            return {k: self._forward(stub.expand(b, k, 1, 1, 1)) for k in self.views}
        finally:
            self.net.encoder = encoder

    def _shared(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        b, v = images.shape[:2]
        return self.decode(self.encode(images.flatten(0, 1)).view(b, v, -1))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """images: (B, V, 3, S, S) float, V >= max(views) -> {v: probabilities (B, R, R, R) float32}."""
        if self.shared:
            return self._shared(images)
        return {k: self._forward(images[:, :k]) for k in self.views}

    @torch.no_grad()
    def check(self, images: torch.Tensor) -> None:
        """Use the shared encoder only if it gives the plain forward's probabilities on ``images``."""
        if not self.shared:
            return
        # in float32 (TF32 off): the check asks whether the network's structure allows sharing, and
        # bf16's rounding in another batch layout (8-bit mantissa) would answer for the precision
        # instead: a well-trained, sharp model moved probabilities by 0.01 that way and lost the fast path
        dtype, self.dtype = self.dtype, None
        matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
                fast = self._shared(images)
                worst = max(float((fast[k] - self._forward(images[:, :k])).abs().max()) for k in self.views)
        except Exception as e:  # a network of another shape: run it whole, once per view count
            log.info("view counts run separately (%s: %s)", type(e).__name__, e)
            self.shared = False
            return
        finally:
            self.dtype = dtype
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        self.shared = worst < 1e-4  # float32 rounding: ~1e-5 even on a steepened net (tests/test_eval.py)
        if not self.shared:
            log.info("view counts run separately: the shared encoder differs by %.2g", worst)


def read_ahead(read, chunks: list) -> Iterator:
    """``read(chunk)`` for each of ``chunks``, in order, the next one read in a thread meanwhile (the
    cache's reads and zlib decoding release the GIL: ~0.12 ms an image beside the network's work)."""
    with ThreadPoolExecutor(1, thread_name_prefix="r2n2-read") as pool:
        future = pool.submit(read, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            out = future.result()
            future = pool.submit(read, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield out


# samples the shared-encoder check runs the plain forward on (at each view count): it tests the
# network's structure, so a few do; 8, not fewer: oneDNN convolves a batch of 1 in another order
CHECK_SAMPLES = 8


class EncodedViews:
    """Each distinct stored image that ``samples`` see in their first ``views`` views, encoded once.

    slots: (U,) the distinct stored images, in the order the samples first use them; index: (N, V)
    int, sample i's views as rows of that list. The encoder runs on ``chunk`` images at a time (the
    last chunk padded to ``chunk`` by repeating an image: every call has one batch size), only as far
    as the batches asked for so far need, so F-scores start with the first batch. Holds (U, F)
    features on ``device`` (210k test images x 256 floats: 215 MB at ShapeNet's size).
    """

    def __init__(
        self,
        counts: ViewCounts,
        samples: Samples,
        views: int,
        chunk: int,
        device: torch.device,
        progress: Progress | None = None,
    ):
        flat = samples.slots[:, :views].ravel()
        uniq, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        self.slots, self.index = uniq[order], rank[inverse.reshape(-1)].reshape(-1, views)
        self.counts, self.chunk, self.device, self.progress = counts, chunk, device, progress
        self.reads = read_ahead(samples.images, [self.slots[i : i + chunk] for i in range(0, len(self.slots), chunk)])
        self.table: torch.Tensor | None = None
        self.done = 0

    def __len__(self) -> int:
        return len(self.slots)

    @torch.no_grad()
    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """The encoded views of samples ``rows``: (len(rows), V, F), encoding what is not yet."""
        need = int(self.index[rows].max()) + 1
        while self.done < need:
            self._encode_next()
        return self.table[torch.from_numpy(self.index[rows]).to(self.device)]

    def _encode_next(self) -> None:
        rgba = next(self.reads)
        n = len(rgba)
        images = to_images(rgba[:, None].to(self.device, non_blocking=True))[:, 0]
        if n < self.chunk <= len(self.slots):
            images = torch.cat([images, images[-1:].expand(self.chunk - n, *images.shape[1:])])
        features = self.counts.encode(images)[:n]
        if self.table is None:
            self.table = features.new_empty(len(self.slots), features.shape[1])
        self.table[self.done : self.done + n] = features
        self.done += n
        if self.progress is not None:
            self.progress.update(n)


def iou_at_thresholds(probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``r2n2.evaluation.metrics.voxel_iou_thresholds``' values, exactly (the same integer counts, the same
    division), counted otherwise: each voxel's probability is placed among the sorted thresholds once
    (``bucketize``) and the counts of ``p >= t`` at every t are cumulative sums of a histogram:
    O(N log T) instead of O(N T) (7x faster at the 19 thresholds r2n2-eval scores: 1 ms instead of
    8 ms a grid on the 2-core CPU).

    probs: (B, *grid) in [0, 1]; target: (B, *grid) {0, 1}; thresholds: (T,). Returns (B, T) float32.
    """
    p = (probs if probs.dtype in (torch.float32, torch.float64) else probs.float()).flatten(1)
    b, t = p.shape[0], len(thresholds)
    ordered, order = thresholds.to(device=p.device, dtype=p.dtype).sort()
    level = torch.bucketize(p, ordered, right=True)  # (B, N): how many thresholds are <= p
    key = torch.arange(b, device=p.device)[:, None] * (t + 1) + level
    occupied = (target > 0.5).flatten(1)

    def at_least(keys: torch.Tensor) -> torch.Tensor:  # (B, T) int32: voxels with p >= each threshold
        hist = torch.bincount(keys, minlength=b * (t + 1)).view(b, t + 1)
        return hist.flip(1).cumsum(1).flip(1)[:, 1:].to(torch.int32)

    inter = at_least(key[occupied])
    union = at_least(key.flatten()) + occupied.sum(1, dtype=torch.int32)[:, None] - inter
    iou = torch.where(union == 0, 1.0, inter / union.clamp(min=1))
    return iou[:, torch.argsort(order)]


@dataclass
class Result:
    """Per-sample scores of one predictor: ``iou (N, T)`` at ``thresholds``; ``fscore {t: (N,)}``."""

    thresholds: tuple[float, ...]
    iou: np.ndarray
    fscore: dict[float, np.ndarray]

    def iou_at(self, t: float) -> np.ndarray:
        return self.iou[:, self.thresholds.index(float(t))]


class Progress:
    """One tqdm bar, with the time left, over every pass of an evaluation. Its unit is a step of
    work: one image encoded, one prediction made (a sample at a view count) or one F-score computed;
    fed from the main thread and from the F-score pool's callbacks."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, smoothing=0.05, dynamic_ncols=True)
        self.lock = threading.Lock()

    def update(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def add(self, n: int) -> None:
        """Change the total by ``n`` steps (a pass found more or less work than counted)."""
        with self.lock:
            self.bar.total += n
            self.bar.refresh()

    def when_done(self, future, n: int) -> None:
        """Count ``n`` steps when ``future`` completes."""
        future.add_done_callback(lambda _f: self.update(n))

    def close(self) -> None:
        self.bar.close()


def network_work(samples: Samples, views: list[int], fscores: int) -> int:
    """Steps (:class:`Progress`) of :func:`score_network`: the distinct images its first ``max(views)``
    views use, a prediction per sample and view count, and ``fscores`` F-scores per sample."""
    return len(np.unique(samples.slots[:, : max(views)])) + len(samples) * (len(views) + fscores)


def score_network(
    net: nn.Module,
    samples: Samples,
    views: list[int],
    thresholds: tuple[float, ...],
    fscore_at: dict[int, tuple[float, ...]],
    scorer: FScorer | DeviceFScorer | None,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 64,
    progress: bool | Progress = True,
    desc: str = "eval",
) -> dict[int, Result]:
    """Run ``net`` over ``samples`` at every view count in ``views``.

    thresholds: IoU thresholds, scored at every view count; fscore_at: {v: thresholds} for the
    F-score (needs ``scorer``); progress: a bar of this call's own (True), none (False), or an
    evaluation's shared :class:`Progress` (its total includes :func:`network_work`). Returns {v: Result}.
    """
    net.eval().to(device)
    fscore_at = fscore_at if scorer is not None else {}
    bar = (
        progress
        if isinstance(progress, Progress)
        else Progress(network_work(samples, views, sum(len(fscore_at.get(v, ())) for v in views)), desc, bool(progress))
    )
    counts = ViewCounts(net, views, autocast_dtype)
    gts_dev = object_occupancy(samples.dataset).to(device)  # (M, R, R, R) bool: one per object
    thr = torch.tensor(thresholds, dtype=torch.float32, device=device)
    n, vmax = len(samples), max(views)
    batches = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    encoded = EncodedViews(counts, samples, vmax, batch_size, device, bar)
    if n:
        first = np.arange(min(CHECK_SAMPLES, n))
        counts.check(to_images(samples.rgba(first, vmax).to(device)))
    if not counts.shared:
        bar.update(len(encoded))  # no shared encoding: each batch encodes its own views
    iou = {v: np.zeros((n, len(thresholds)), np.float32) for v in views}
    pending: list[tuple[int, float, np.ndarray, object]] = []
    try:
        for index in batches:
            if counts.shared:
                probs_at = counts.decode(encoded.gather(index))
            else:
                probs_at = counts(to_images(samples.rgba(index, vmax).to(device, non_blocking=True)))
            obj = torch.from_numpy(samples.obj[index]).to(device)
            gt = gts_dev[obj]
            for v, probs in probs_at.items():
                iou[v][index] = iou_at_thresholds(probs, gt, thr).cpu().numpy()
                for t in fscore_at.get(v, ()):
                    future = scorer.submit(samples.obj[index].tolist(), gt, probs >= t)
                    bar.when_done(future, len(index))
                    pending.append((v, t, index, future))
            bar.update(len(index) * len(views))
        fscore = {v: {t: np.zeros(n) for t in fscore_at.get(v, ())} for v in views}
        for v, t, index, future in pending:
            fscore[v][t][index] = future.result()
    finally:
        if bar is not progress:
            bar.close()
    return {v: Result(tuple(thresholds), iou[v], fscore.get(v, {})) for v in views}


# (prediction, object) pairs per F-score task of :func:`score_indexed`: enough to share a prediction's
# surface within a task, few enough to spread over the pool's processes
PAIRS_PER_TASK = 256


def indexed_pairs(pred_index: np.ndarray, obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (prediction, object) pairs of samples predicted ``pred_index (N,)`` of objects
    ``obj (N,)``, sorted by object: ``pairs (P, 2)`` and ``inverse (N,)`` (sample i is pair inverse[i])."""
    pairs, inverse = np.unique(np.stack([obj, pred_index], 1), axis=0, return_inverse=True)
    return pairs[:, ::-1].copy(), inverse.reshape(-1)


def score_indexed(
    pred_table: torch.Tensor,
    pred_index: np.ndarray,
    samples: Samples,
    thresholds: tuple[float, ...],
    fscore_at: tuple[float, ...],
    scorer: FScorer | DeviceFScorer | None,
    progress: Progress | None = None,
    gts: torch.Tensor | None = None,
) -> Result:
    """Score predictions drawn from a table: sample i is predicted ``pred_table[pred_index[i]]``.

    pred_table: (P, R, R, R) probabilities (a constant baseline: one per category) or {0, 1}
    grids (retrieved training shapes). Each distinct (prediction, object) pair is scored once, in
    tasks of :data:`PAIRS_PER_TASK` pairs (never all pairs' grids at once: up to one per sample).
    gts: ``object_occupancy(samples.dataset)``, if the caller has it. ``progress`` counts a step per
    sample for the IoU and for each F-score threshold.
    """
    pairs, inverse = indexed_pairs(pred_index, samples.obj)
    gts = object_occupancy(samples.dataset) if gts is None else gts
    thr = torch.tensor(thresholds, dtype=torch.float32)
    iou = np.zeros((len(pairs), len(thresholds)), np.float32)
    futures: dict[float, list] = {float(t): [] for t in (fscore_at if scorer is not None else ())}
    for i in range(0, len(pairs), PAIRS_PER_TASK):
        chunk = pairs[i : i + PAIRS_PER_TASK]
        probs = pred_table[torch.from_numpy(chunk[:, 0])].float()
        gt = gts[torch.from_numpy(chunk[:, 1])]
        iou[i : i + len(chunk)] = iou_at_thresholds(probs, gt, thr).numpy()
        for t, fs in futures.items():
            fs.append(scorer.submit(chunk[:, 1].tolist(), gt, probs >= t))
            if progress is not None:
                progress.when_done(fs[-1], len(chunk))
        if progress is not None:
            progress.update(len(chunk))
    fscore = {t: np.concatenate([f.result() for f in fs])[inverse] if fs else np.zeros(0) for t, fs in futures.items()}
    if progress is not None:  # the steps are samples; the pairs, fewer, were counted as they were done
        progress.update((len(inverse) - len(pairs)) * (1 + len(futures)))
    return Result(tuple(thresholds), iou[inverse], fscore)

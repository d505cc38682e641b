"""Score a network (or any per-sample prediction) on evaluation samples, streaming: per-sample IoU
at many thresholds and F-score@1%, without keeping the probabilities.

Speed (issue 9, item 6), with the same figures as scoring every view count separately:

- one forward per batch for all view counts: each view is encoded once, and the network is re-run
  from the encoded views for 1..V views (:class:`SharedEncoder`, checked against the plain forward
  on the first batch; a network it does not fit is run once per view count instead);
- IoU is thresholded on the device in float32 (never float16: p = 0.29995 would round to 0.30005);
- F-scores run in a process pool beside the network (:class:`r2n2.fscore.FScorer`), ground-truth
  surfaces computed once per object, constant and retrieved predictions scored once per distinct
  (prediction, object) pair.
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from r2n2.baselines import object_voxels
from r2n2.data.dataset import PackedDataset
from r2n2.data.transforms import to_images
from r2n2.fscore import FScorer
from r2n2.metrics import voxel_iou_thresholds

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

    def rgba(self, index: np.ndarray, views: int) -> torch.Tensor:
        """The images of samples ``index``: (len(index), views, S, S, 4) uint8."""
        s = self.slots[index, :views]
        img = self.dataset.images(s.ravel())
        rgba = torch.from_numpy(img).view(*s.shape, *img.shape[1:])
        if self.binary_alpha:
            rgba[..., 3] = torch.where(rgba[..., 3] > 0, 255, 0).to(torch.uint8)
        return rgba


def all_samples(dataset: PackedDataset, views: int) -> Samples:
    """Every sample of the split; with v views a sample sees its own view and v - 1 other views of
    its object, fixed per sample (``PackedDataset.view_slots``: the v-view list is a prefix of the
    V-view list)."""
    rows = np.arange(len(dataset))
    slots = np.stack([dataset.view_slots(int(i))[:views] for i in rows]) if len(rows) else np.zeros((0, views), int)
    return Samples(dataset, rows, dataset.samples[:, 0].copy(), slots)


def first_views(dataset: PackedDataset, views: int, binary_alpha: bool = False) -> Samples:
    """One sample per object seeing its first ``views`` renderings (00, 01, ...): Pix2Vox's test code
    (utils/data_loaders.py at 0596d5e) and 3D-R2N2's first commit (014e74c). Needs a dataset holding
    every view of its objects."""
    objects = np.unique(dataset.samples[:, 0])
    rows = np.array([int(np.flatnonzero(dataset.samples[:, 0] == o)[0]) for o in objects], dtype=np.int64)
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
    objects = np.unique(dataset.samples[:, 0])
    rows = np.array([int(np.flatnonzero(dataset.samples[:, 0] == o)[0]) for o in objects], dtype=np.int64)
    draws = [np.random.default_rng([seed, zlib.crc32(dataset.objects[o]["id"].encode())])
             .integers(0, dataset.count[o], views) for o in objects]
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

    def _shared(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        b, v = images.shape[:2]
        encoder = self.net.encoder
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            features = encoder(images.flatten(0, 1)).view(b, v, -1)
        try:
            self.net.encoder = SharedEncoder(features)
            stub = images.new_empty(b, 1, 1, 1, 1)
            return {k: self._forward(stub.expand(b, k, 1, 1, 1)) for k in self.views}
        finally:
            self.net.encoder = encoder

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


@dataclass
class Result:
    """Per-sample scores of one predictor: ``iou (N, T)`` at ``thresholds``; ``fscore {t: (N,)}``."""

    thresholds: tuple[float, ...]
    iou: np.ndarray
    fscore: dict[float, np.ndarray]

    def iou_at(self, t: float) -> np.ndarray:
        return self.iou[:, self.thresholds.index(float(t))]


class _Progress:
    """One tqdm bar over the F-score tasks (the slower half), fed from the pool's callbacks."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, desc=desc, unit="batch", disable=not enabled, smoothing=0.1)
        self.lock = threading.Lock()

    def done(self, _future=None) -> None:
        with self.lock:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def score_network(net: nn.Module, samples: Samples, views: list[int], thresholds: tuple[float, ...],
                  fscore_at: dict[int, tuple[float, ...]], scorer: FScorer | None, device: torch.device,
                  autocast_dtype: torch.dtype | None = None, batch_size: int = 64, progress: bool = True,
                  desc: str = "eval") -> dict[int, Result]:
    """Run ``net`` over ``samples`` at every view count in ``views``.

    thresholds: IoU thresholds, scored at every view count; fscore_at: {v: thresholds} for the
    F-score (needs ``scorer``). Returns {v: Result}.
    """
    net.eval().to(device)
    counts = ViewCounts(net, views, autocast_dtype)
    gts = object_voxels(samples.dataset) > 0.5  # (M, R, R, R) bool: one per object
    gts_dev = gts.to(device)
    thr = torch.tensor(thresholds, dtype=torch.float32, device=device)
    n, vmax = len(samples), max(views)
    batches = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    tasks = len(batches) * sum(len(fscore_at.get(v, ())) for v in views) if scorer is not None else 0
    bar = _Progress(tasks or len(batches), desc, progress)
    iou = {v: np.zeros((n, len(thresholds)), np.float32) for v in views}
    pending: list[tuple[int, float, np.ndarray, object]] = []
    try:
        for b, index in enumerate(batches):
            images = to_images(samples.rgba(index, vmax).to(device, non_blocking=True))
            if b == 0:
                counts.check(images)
            obj = torch.from_numpy(samples.obj[index]).to(device)
            gt = gts_dev[obj]
            for v, probs in counts(images).items():
                iou[v][index] = voxel_iou_thresholds(probs, gt, thr).cpu().numpy()
                for t in fscore_at.get(v, ()) if scorer is not None else ():
                    pred = (probs >= t).cpu().numpy()
                    future = scorer.submit(samples.obj[index].tolist(), gts[obj.cpu()].numpy(), pred)
                    future.add_done_callback(bar.done)
                    pending.append((v, t, index, future))
            if not tasks:
                bar.done()
        fscore = {v: {t: np.zeros(n) for t in fscore_at.get(v, ())} for v in views} if scorer is not None else {}
        for v, t, index, future in pending:
            fscore[v][t][index] = future.result()
    finally:
        bar.close()
    return {v: Result(tuple(thresholds), iou[v], fscore.get(v, {})) for v in views}


def score_indexed(pred_table: torch.Tensor, pred_index: np.ndarray, samples: Samples, thresholds: tuple[float, ...],
                  fscore_at: tuple[float, ...], scorer: FScorer | None) -> Result:
    """Score predictions drawn from a table: sample i is predicted ``pred_table[pred_index[i]]``.

    pred_table: (P, R, R, R) probabilities (a constant baseline: one per category) or {0, 1}
    grids (retrieved training shapes). Each distinct (prediction, object) pair is scored once.
    """
    pairs, inverse = np.unique(np.stack([pred_index, samples.obj], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    gts = object_voxels(samples.dataset) > 0.5
    probs = pred_table[torch.from_numpy(pairs[:, 0])].float()
    gt = gts[torch.from_numpy(pairs[:, 1])]
    iou = voxel_iou_thresholds(probs, gt, torch.tensor(thresholds, dtype=torch.float32)).numpy()
    fscore = {}
    for t in fscore_at if scorer is not None else ():
        fscore[float(t)] = scorer.submit(pairs[:, 1].tolist(), gt.numpy(), (probs >= t).numpy())
    return Result(tuple(thresholds), iou[inverse], {t: f.result()[inverse] for t, f in fscore.items()})

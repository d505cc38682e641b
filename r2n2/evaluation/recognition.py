"""Recognition baselines (Tatarchenko et al., CVPR 2019, "What Do Single-view 3D Reconstruction
Networks Learn?"): predictors that answer with a *training* shape, to tell reconstruction from
recognition. All see one image per sample (the sample's own view) and are fitted on the training
split only.

- clustering: k-means of the training grids (``scipy.cluster.vq.kmeans2``, k-means++ seeding: a
  well-kept library doing exact Lloyd iterations on a few hundred 32^3 binary vectors in a second); a
  classifier trained on the training images predicts a test image's cluster; the answer is that
  cluster's mean occupancy (its centroid), thresholded like the mean shapes.
- retrieval: a test image's answer is the grid of the training image nearest to it (cosine) in an
  embedding learned on the training set: the scores of a linear classifier of training-object identity.
- oracle nearest neighbour: the training grid with the highest IoU to the test object's own grid.
  It looks at the answer, so it is no baseline but an upper bound for any retrieval method.

Image features are cheap on purpose, so the baselines run in seconds on a CPU beside train.py and
r2n2-eval: images area-downsampled to 32 x 32, one frozen layer of random 5 x 5 filters (seeded;
rectified both ways and average-pooled to 3 x 3, as random-feature networks do), standardised; both
classifiers are ridge regressions onto one-hot labels, solved in closed form (no training loop, no
learning rate, the same answer every run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from r2n2.data.dataset import PackedDataset
from r2n2.data.transforms import to_images
from r2n2.evaluation.baselines import object_occupancy

log = logging.getLogger(__name__)

# defaults, sized for the built-in synthetic data on a 2-core CPU (1,157 training objects x 6 views;
# 9 per cluster with the 286 of the earlier 32 x 24 set)
CLUSTERS = 32  # ~36 training shapes per cluster (Tatarchenko et al.: 500 clusters of ~35k shapes)
IMAGE_SIZE = 32  # images are area-downsampled to 32 x 32
FILTERS, KERNEL, POOL = 96, 5, 3  # random filters -> 96 x 2 signs x 3 x 3 = 1,728 features
RIDGE = 1e-2  # ridge strength, relative to the mean feature variance (features are standardised)
NAMES = ("clustering", "retrieval", "oracle nearest neighbour")


# rows per block of the large products (image features, retrieval similarities, the oracle's IoUs):
# memory stays bounded at ShapeNet's size (735k training and 210k test images, 30k training objects)
CHUNK = 4096


@dataclass
class Fitted:
    """What the baselines learned from the training split.

    centroids: (k, R, R, R) float cluster mean occupancies; shapes: (N_obj, R, R, R) bool training
    grids; filters: the random filters; mean, std: feature standardisation; w_cluster: (D, k) and
    w_object: (D, N_obj) ridge weights; bank: (N_img, D) the training images' features divided by
    the length of their embedding ``f @ w_object``, and gram = ``w_object @ w_object.T`` (D, D), so
    that ``(f @ gram) @ bank.T`` ranks the training images as the cosine of the embeddings does,
    without any (images x objects) array (735k x 30k float64 = 180 GB at ShapeNet's size);
    bank_obj: (N_img,) their objects.
    """

    centroids: torch.Tensor
    shapes: torch.Tensor
    filters: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    w_cluster: torch.Tensor
    w_object: torch.Tensor
    gram: torch.Tensor
    bank: torch.Tensor
    bank_obj: np.ndarray

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (random_features(x, self.filters) - self.mean) / self.std

    def nearest(self, f: torch.Tensor) -> np.ndarray:
        """Index of the training image whose embedding is nearest (cosine) to each of ``f (N, D)``'s:
        (N,) int, the first of equals. cos(e_t, e_j) = f_t G f_j / (|e_t| |e_j|) with G = W W^T, and
        |e_t| is the same for every j, so the argmax of ``(f_t G) . bank_j`` is the nearest."""
        q = f.to(self.bank.device) @ self.gram  # (N, D)
        best = torch.full((len(q),), -torch.inf, dtype=q.dtype, device=q.device)
        index = torch.zeros(len(q), dtype=torch.int64, device=q.device)
        for j in range(0, len(self.bank), CHUNK):
            value, arg = (q @ self.bank[j : j + CHUNK].T).max(1)
            better = value > best  # strictly: an equal value later keeps the first
            best, index = torch.where(better, value, best), torch.where(better, arg + j, index)
        return index.cpu().numpy()


def small_images(
    dataset: PackedDataset,
    slots: np.ndarray,
    size: int = IMAGE_SIZE,
    chunk: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Stored images ``slots (N,)`` -> ``(N, 3, size, size) float`` (on the CPU), normalised as the
    network input; composited and pooled on ``device``, the next chunk read meanwhile."""
    from r2n2.evaluation.scoring import read_ahead

    chunks = [slots[i : i + chunk] for i in range(0, len(slots), chunk)]
    out = [
        F.adaptive_avg_pool2d(to_images(torch.from_numpy(rgba)[:, None].to(device))[:, 0], size).cpu()
        for rgba in read_ahead(dataset.images, chunks)
    ]  # rgba: (B, S, S, 4)
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)


def image_features(
    dataset: PackedDataset, slots: np.ndarray, filters: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """:func:`random_features` of the stored images ``slots (N,)``, :data:`CHUNK` images at a time:
    (N, D) float64 (the whole split at once would hold (N, 192, 16, 16) float32: 72 GB for ShapeNet's
    training images)."""
    out = [
        random_features(small_images(dataset, slots[i : i + CHUNK], device=device), filters)
        for i in range(0, len(slots), CHUNK)
    ]
    return torch.cat(out) if out else torch.zeros(0, FILTERS * 2 * POOL * POOL, dtype=torch.float64)


def own_view_slots(dataset: PackedDataset) -> np.ndarray:
    """Each sample's own stored image: (N,) int."""
    return dataset.first[dataset.samples[:, 0]] + dataset.samples[:, 1]


def random_features(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``x (N, 3, 32, 32) float -> (N, FILTERS * 2 * POOL * POOL) float64``."""
    z = F.conv2d(x, filters, stride=2, padding=KERNEL // 2)
    z = torch.cat([F.relu(z), F.relu(-z)], 1)
    return F.adaptive_avg_pool2d(z, POOL).flatten(1).double()


def ridge(f: torch.Tensor, labels: np.ndarray, classes: int) -> torch.Tensor:
    """Least squares onto one-hot ``labels`` with an L2 penalty: (D, classes) float64. ``f.T @ onehot``
    is summed per class (index_add) instead of built: the one-hot matrix of ShapeNet's training
    images and objects would be 735k x 30k float64."""
    fy = torch.zeros(classes, f.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(labels), f).T
    gram = f.T @ f
    gram.diagonal().add_(RIDGE * float(gram.diagonal().mean()))
    return torch.linalg.solve(gram, fy)


def fit(train: PackedDataset, clusters: int = CLUSTERS, seed: int = 0, device: torch.device | str = "cpu") -> Fitted:
    """k-means of the training grids, then the two ridge classifiers on the training images'
    random features (cluster labels, object labels); the images composited and pooled on ``device``."""
    from scipy.cluster.vq import kmeans2

    shapes = object_occupancy(train)  # (O, R, R, R) bool
    used = np.unique(train.samples[:, 0])
    k = max(1, min(int(clusters), len(used)))
    centroids, labels = kmeans2(shapes[used].flatten(1).numpy().astype(np.float64), k, minit="++", seed=seed)
    centroids = torch.from_numpy(centroids).float().view(k, *shapes.shape[1:]).clamp(0, 1)
    cluster_of = np.zeros(len(shapes), np.int64)
    cluster_of[used] = labels

    filters = torch.randn(FILTERS, 3, KERNEL, KERNEL, generator=torch.Generator().manual_seed(seed))
    filters -= filters.mean((1, 2, 3), keepdim=True)
    filters /= filters.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    obj = train.samples[:, 0]
    raw = image_features(train, own_view_slots(train), filters, device)
    mean, std = raw.mean(0), raw.std(0).clamp(min=1e-6)
    f = (raw - mean) / std
    del raw
    w_cluster, w_object = ridge(f, cluster_of[obj], k), ridge(f, obj, len(shapes))
    gram = w_object @ w_object.T
    length = torch.cat([((f[i : i + CHUNK] @ gram) * f[i : i + CHUNK]).sum(1) for i in range(0, len(f), CHUNK)]).sqrt()
    bank = f / length.clamp(min=1e-12)[:, None]  # F.normalize's floor
    log.info("recognition baselines fitted: %d clusters, %d training images", k, len(f))
    return Fitted(centroids, shapes, filters, mean, std, w_cluster, w_object, gram, bank, obj.copy())


@torch.no_grad()
def predict(
    fitted: Fitted, dataset: PackedDataset, slots: np.ndarray, obj: np.ndarray, device: torch.device | str = "cpu"
) -> dict[str, tuple]:
    """The three baselines for the images ``slots (N,)`` of objects ``obj (N,)`` of ``dataset``.

    Returns {name: (table (P, R, R, R) float, index (N,) int)}: sample i is predicted ``table[index[i]]``.
    The retrieval's and the oracle's products run on ``device``, in blocks.
    """
    fitted.bank, fitted.gram = fitted.bank.to(device), fitted.gram.to(device)
    f = (image_features(dataset, slots, fitted.filters, device) - fitted.mean) / fitted.std
    cluster = (f @ fitted.w_cluster).argmax(1).numpy()
    nearest = np.concatenate([fitted.nearest(f[i : i + CHUNK]) for i in range(0, len(f), CHUNK)] or [np.zeros(0, int)])
    return {
        "clustering": (fitted.centroids, cluster),
        "retrieval": (fitted.shapes, fitted.bank_obj[nearest]),
        "oracle nearest neighbour": (fitted.shapes, oracle(fitted.shapes, object_occupancy(dataset), device)[obj]),
    }


def oracle(train_shapes: torch.Tensor, test_shapes: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """For each test grid, the index of the training grid with the highest IoU: (N_test,) int. On
    ``device``, :data:`CHUNK` test grids at a time (counts of 0/1 voxels: exact in float32)."""
    b = train_shapes.flatten(1).float().to(device)  # (O, V)
    out = []
    for i in range(0, len(test_shapes), CHUNK):
        a = test_shapes[i : i + CHUNK].flatten(1).float().to(device)  # (T, V)
        inter = a @ b.T  # (T, O)
        union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        out.append(iou.argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def baseline_metrics(
    train: PackedDataset, test: PackedDataset, threshold: float = 0.3, clusters: int = CLUSTERS, seed: int = 0
) -> dict[str, float]:
    """Test IoU@``threshold`` (mean over samples, each sample's own view) of the three baselines:
    ``{"baseline/<name>_test_iou": float}``, for train.py's metrics.json."""
    from r2n2.evaluation.metrics import voxel_iou_thresholds

    fitted = fit(train, clusters, seed)
    obj = test.samples[:, 0]
    gts = object_occupancy(test)
    out = {}
    for name, (table, index) in predict(fitted, test, own_view_slots(test), obj).items():
        pairs, inverse = np.unique(np.stack([index, obj], 1), axis=0, return_inverse=True)
        iou = voxel_iou_thresholds(
            table[torch.from_numpy(pairs[:, 0])].float(),
            gts[torch.from_numpy(pairs[:, 1])],
            torch.tensor([float(threshold)]),
        )[:, 0].numpy()
        out[f"baseline/{name.replace(' ', '_')}_test_iou"] = float(iou[inverse.reshape(-1)].mean())
    return out

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

from r2n2.baselines import object_voxels
from r2n2.data.dataset import PackedDataset
from r2n2.data.transforms import to_images

log = logging.getLogger(__name__)

# defaults, sized for the built-in synthetic data on a 2-core CPU (1,157 training objects x 6 views;
# 9 per cluster with the 286 of the earlier 32 x 24 set)
CLUSTERS = 32  # ~36 training shapes per cluster (Tatarchenko et al.: 500 clusters of ~35k shapes)
IMAGE_SIZE = 32  # images are area-downsampled to 32 x 32
FILTERS, KERNEL, POOL = 96, 5, 3  # random filters -> 96 x 2 signs x 3 x 3 = 1,728 features
RIDGE = 1e-2  # ridge strength, relative to the mean feature variance (features are standardised)
NAMES = ("clustering", "retrieval", "oracle nearest neighbour")


@dataclass
class Fitted:
    """What the baselines learned from the training split.

    centroids: (k, R, R, R) float cluster mean occupancies; shapes: (N_obj, R, R, R) {0, 1} training
    grids; filters: the random filters; mean, std: feature standardisation; w_cluster: (D, k) and
    w_object: (D, N_obj) ridge weights; bank: (N_img, N_obj) unit embeddings of the training images,
    bank_obj: (N_img,) their objects.
    """

    centroids: torch.Tensor
    shapes: torch.Tensor
    filters: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    w_cluster: torch.Tensor
    w_object: torch.Tensor
    bank: torch.Tensor
    bank_obj: np.ndarray

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (random_features(x, self.filters) - self.mean) / self.std

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f @ self.w_object, dim=1)


def small_images(dataset: PackedDataset, slots: np.ndarray, size: int = IMAGE_SIZE, chunk: int = 512) -> torch.Tensor:
    """Stored images ``slots (N,)`` -> ``(N, 3, size, size) float``, normalised as the network input."""
    out = []
    for i in range(0, len(slots), chunk):
        rgba = torch.from_numpy(dataset.images(slots[i:i + chunk]))[:, None]  # (B, 1, S, S, 4)
        out.append(F.adaptive_avg_pool2d(to_images(rgba)[:, 0], size))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)


def own_view_slots(dataset: PackedDataset) -> np.ndarray:
    """Each sample's own stored image: (N,) int."""
    return dataset.first[dataset.samples[:, 0]] + dataset.samples[:, 1]


def random_features(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``x (N, 3, 32, 32) float -> (N, FILTERS * 2 * POOL * POOL) float64``."""
    z = F.conv2d(x, filters, stride=2, padding=KERNEL // 2)
    z = torch.cat([F.relu(z), F.relu(-z)], 1)
    return F.adaptive_avg_pool2d(z, POOL).flatten(1).double()


def ridge(f: torch.Tensor, labels: np.ndarray, classes: int) -> torch.Tensor:
    """Least squares onto one-hot ``labels`` with an L2 penalty: (D, classes) float64."""
    y = torch.zeros(len(labels), classes, dtype=torch.float64)
    y[torch.arange(len(labels)), torch.from_numpy(labels)] = 1
    gram = f.T @ f
    gram.diagonal().add_(RIDGE * float(gram.diagonal().mean()))
    return torch.linalg.solve(gram, f.T @ y)


def fit(train: PackedDataset, clusters: int = CLUSTERS, seed: int = 0) -> Fitted:
    """k-means of the training grids, then the two ridge classifiers on the training images'
    random features (cluster labels, object labels)."""
    from scipy.cluster.vq import kmeans2

    shapes = object_voxels(train)  # (O, R, R, R) {0, 1}
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
    raw = random_features(small_images(train, own_view_slots(train)), filters)
    mean, std = raw.mean(0), raw.std(0).clamp(min=1e-6)
    f = (raw - mean) / std
    w_cluster, w_object = ridge(f, cluster_of[obj], k), ridge(f, obj, len(shapes))
    bank = F.normalize(f @ w_object, dim=1)
    log.info("recognition baselines fitted: %d clusters, %d training images", k, len(f))
    return Fitted(centroids, shapes, filters, mean, std, w_cluster, w_object, bank, obj.copy())


@torch.no_grad()
def predict(fitted: Fitted, dataset: PackedDataset, slots: np.ndarray, obj: np.ndarray) -> dict[str, tuple]:
    """The three baselines for the images ``slots (N,)`` of objects ``obj (N,)`` of ``dataset``.

    Returns {name: (table (P, R, R, R) float, index (N,) int)}: sample i is predicted ``table[index[i]]``.
    """
    f = fitted.features(small_images(dataset, slots))
    cluster = (f @ fitted.w_cluster).argmax(1).numpy()
    nearest = (fitted.embed(f) @ fitted.bank.T).argmax(1).numpy()
    return {"clustering": (fitted.centroids, cluster),
            "retrieval": (fitted.shapes, fitted.bank_obj[nearest]),
            "oracle nearest neighbour": (fitted.shapes, oracle(fitted.shapes, object_voxels(dataset))[obj])}


def oracle(train_shapes: torch.Tensor, test_shapes: torch.Tensor) -> np.ndarray:
    """For each test grid, the index of the training grid with the highest IoU: (N_test,) int."""
    a = test_shapes.flatten(1).float()  # (T, V)
    b = train_shapes.flatten(1).float()  # (O, V)
    inter = a @ b.T  # (T, O)
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return iou.argmax(1).numpy()


def baseline_metrics(train: PackedDataset, test: PackedDataset, threshold: float = 0.3,
                     clusters: int = CLUSTERS, seed: int = 0) -> dict[str, float]:
    """Test IoU@``threshold`` (mean over samples, each sample's own view) of the three baselines:
    ``{"baseline/<name>_test_iou": float}``, for train.py's metrics.json."""
    from r2n2.metrics import voxel_iou_thresholds

    fitted = fit(train, clusters, seed)
    obj = test.samples[:, 0]
    gts = object_voxels(test) > 0.5
    out = {}
    for name, (table, index) in predict(fitted, test, own_view_slots(test), obj).items():
        pairs, inverse = np.unique(np.stack([index, obj], 1), axis=0, return_inverse=True)
        iou = voxel_iou_thresholds(table[torch.from_numpy(pairs[:, 0])].float(), gts[torch.from_numpy(pairs[:, 1])],
                                   torch.tensor([float(threshold)]))[:, 0].numpy()
        out[f"baseline/{name.replace(' ', '_')}_test_iou"] = float(iou[inverse.reshape(-1)].mean())
    return out

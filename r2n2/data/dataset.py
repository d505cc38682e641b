"""``PackedDataset``: samples of one split, read from its packed cache (``r2n2.data.cache``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from r2n2.data.cache import ImageStore
from r2n2.data.samplers import SampleKey

log = logging.getLogger(__name__)


class PackedDataset(Dataset):
    """One split of (object, view) samples from a packed cache folder.

    ``dataset[key]`` is a dict of raw cached values (``Collate`` turns a list of them into a batch):

    - ``rgba: (V, S, S, 4) uint8`` (numpy) the sample's view first, then V-1 other distinct views of the
      same object
    - ``voxels: (R, R, R) uint8`` (numpy) {0, 1} occupancy in (x, y, z) order
    - ``category: str``, ``category_index: int`` (index into ``categories``), ``object_id: str``
    - ``seed: int`` when ``key`` is a :class:`SampleKey`

    ``key`` is a sample index (``views`` views, the extra ones fixed per sample: evaluation is
    repeatable), or a :class:`SampleKey` ``(index, views, seed)`` from the training batch sampler (its
    extra views drawn from ``(seed, index)``: no random state in the worker process).

    views: V, the number of views returned for an integer key (and the most a SampleKey may ask).
    categories: the category names shared by all splits, fixing ``category_index``.
    """

    def __init__(self, folder: str | Path, views: int, categories: list[str], seed: int = 0):
        self.folder = Path(folder)
        index = json.loads((self.folder / "index.json").read_text())
        self.size, self.resolution = index["image_size"], index["resolution"]
        self.num_images = index["num_images"]
        self.objects = index["objects"]
        self.samples = np.load(self.folder / "samples.npy").reshape(-1, 2)
        self.first = np.array([o["first"] for o in self.objects], dtype=np.int64)
        self.count = np.array([o["count"] for o in self.objects], dtype=np.int64)
        self.categories = list(categories)
        self.category_index = np.array([self.categories.index(o["category"]) for o in self.objects])
        self.views, self.seed = views, seed
        fewest = int(self.count.min()) if len(self.count) else 0
        if views > 1 and fewest < views:
            bad = self.objects[int(self.count.argmin())]["id"]
            raise ValueError(
                f"{views} views per sample asked, but object {bad} has only {fewest} views in {self.folder}"
            )
        skipped = self.folder / "skipped.json"
        if skipped.is_file():
            log.warning(
                "%d bad file(s) were skipped when %s was built (list in %s)",
                len(json.loads(skipped.read_text())),
                self.folder.name,
                skipped,
            )
        self._images = ImageStore(self.folder, self.size)
        self._vox: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # worker processes re-open the memory map instead of copying it
        return {**self.__dict__, "_vox": None}

    def images(self, slots: np.ndarray) -> np.ndarray:
        """The stored images ``slots (n,) int``: ``(n, S, S, 4) uint8`` RGBA, a new array, each image
        decoded and checked (a corrupt one raises ``r2n2.data.cache.CorruptImage`` naming the cache)."""
        return self._images.read(slots)

    def voxel_bits(self) -> np.ndarray:
        """Every object's bit-packed grid: ``(M, ceil(R^3 / 8)) uint8``, numpy's bit order (read-only)."""
        if self._vox is None:
            shape = (len(self.objects), self.resolution**3 // 8)
            self._vox = (
                np.memmap(self.folder / "voxels.u8", np.uint8, "r", shape=shape)
                if shape[0]
                else np.zeros(shape, np.uint8)
            )
        return self._vox

    def decoded_bytes(self) -> int:
        """Bytes of the split's images decoded and its voxels packed: what holding it whole takes."""
        return self.num_images * self.size * self.size * 4 + len(self.objects) * self.resolution**3 // 8

    def min_views(self) -> int:
        """The number of views, in the source, of the object with the fewest (0 if none)."""
        return min((o.get("views", o["count"]) for o in self.objects), default=0)

    def view_slots(self, i: int, views: int | None = None, seed: int | None = None) -> np.ndarray:
        """Stored-image indices of sample ``i``'s views: (views,) int, its own view first; the others
        drawn from ``(seed, i)``, or fixed per sample when ``seed`` is None."""
        views = self.views if views is None else views
        if views > self.views:
            raise ValueError(f"{views} views asked of {self.folder}, which was opened for {self.views}")
        obj, slot = self.samples[i]
        if views == 1:
            return self.first[obj] + np.array([slot])
        others = np.delete(np.arange(self.count[obj]), slot)
        rng = np.random.default_rng([self.seed, i] if seed is None else [seed, i])
        return self.first[obj] + np.r_[slot, others[rng.permutation(len(others))[: views - 1]]]

    def batch_slots(self, keys: list) -> np.ndarray:
        """(B, V) stored-image indices of a batch of keys (all sample indices, or all ``SampleKey``s
        of one view count), row b as ``view_slots`` of key b; one-view batches without a Python loop."""
        if not keys:
            return np.zeros((0, self.views), np.int64)
        keyed = isinstance(keys[0], SampleKey)
        views = keys[0].views if keyed else self.views
        if views == 1:  # no draw: each sample's own view
            idx = np.fromiter((k.index for k in keys), np.int64, len(keys)) if keyed else np.asarray(keys, np.int64)
            return (self.first[self.samples[idx, 0]] + self.samples[idx, 1])[:, None]
        if keyed:
            return np.stack([self.view_slots(k.index, k.views, k.seed) for k in keys])
        return np.stack([self.view_slots(int(i)) for i in keys])

    def __getitem__(self, key: int | SampleKey) -> dict:
        i, views, seed = key if isinstance(key, tuple) else (key, None, None)
        obj = int(self.samples[i, 0])
        r = self.resolution
        item = {
            "rgba": self.images(self.view_slots(i, views, seed)),
            "voxels": np.unpackbits(self.voxel_bits()[obj])[: r**3].reshape(r, r, r),
            "category": self.objects[obj]["category"],
            "category_index": int(self.category_index[obj]),
            "object_id": self.objects[obj]["id"],
        }
        if seed is not None:
            item["seed"] = seed
        return item

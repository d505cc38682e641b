"""``PackedDataset``: samples of one split, read from its memory-mapped cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


log = logging.getLogger(__name__)


class PackedDataset(Dataset):
    """One split of (object, view) samples from a packed cache folder.

    ``dataset[i]`` is a dict of raw cached values (``collate`` turns a list of them into a batch):

    - ``rgba: (V, S, S, 4) uint8`` (numpy) the sample's view first, then V-1 other distinct views of the
      same object (random at training, fixed per sample otherwise)
    - ``voxels: (R, R, R) uint8`` (numpy) {0, 1} occupancy in (x, y, z) order
    - ``category: str``, ``category_index: int`` (index into ``categories``), ``object_id: str``

    views: V, the number of views returned per sample.
    categories: the category names shared by all splits, fixing ``category_index``.
    """

    def __init__(self, folder: str | Path, views: int, categories: list[str], train: bool = False, seed: int = 0):
        self.folder = Path(folder)
        index = json.loads((self.folder / "index.json").read_text())
        self.size, self.resolution = index["image_size"], index["resolution"]
        self.num_images = index["num_images"]
        self.objects = index["objects"]
        self.samples = np.asarray(index["samples"], dtype=np.int64).reshape(-1, 2)
        self.first = np.array([o["first"] for o in self.objects], dtype=np.int64)
        self.count = np.array([o["count"] for o in self.objects], dtype=np.int64)
        self.categories = list(categories)
        self.category_index = np.array([self.categories.index(o["category"]) for o in self.objects])
        self.views, self.train, self.seed = views, train, seed
        fewest = int(self.count.min()) if len(self.count) else 0
        if views > 1 and fewest < views:
            bad = self.objects[int(self.count.argmin())]["id"]
            raise ValueError(f"{views} views per sample asked, but object {bad} has only {fewest} views in {self.folder}")
        skipped = self.folder / "skipped.json"
        if skipped.is_file():
            log.warning("%d bad samples were skipped when %s was built (list in %s)",
                        len(json.loads(skipped.read_text())), self.folder.name, skipped)
        self._img = self._vox = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # worker processes re-open the memory maps instead of copying them
        return {**self.__dict__, "_img": None, "_vox": None}

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._img is None:
            s, r = self.size, self.resolution
            self._img = np.memmap(self.folder / "images.u8", np.uint8, "r", shape=(self.num_images, s, s, 4))
            self._vox = np.memmap(self.folder / "voxels.u8", np.uint8, "r", shape=(len(self.objects), r**3 // 8))
        return self._img, self._vox

    def view_slots(self, i: int) -> np.ndarray:
        """Stored-image indices of sample ``i``'s views: (V,) int, its own view first."""
        obj, slot = self.samples[i]
        if self.views == 1:
            return self.first[obj] + np.array([slot])
        others = np.delete(np.arange(self.count[obj]), slot)
        if self.train:
            pick = torch.randperm(len(others))[: self.views - 1].numpy()
        else:  # fixed for a given sample, so evaluation is repeatable
            pick = np.random.default_rng([self.seed, i]).permutation(len(others))[: self.views - 1]
        return self.first[obj] + np.r_[slot, others[pick]]

    def __getitem__(self, i: int) -> dict:
        img, vox = self._arrays()
        obj = int(self.samples[i, 0])
        r = self.resolution
        return {
            "rgba": img[self.view_slots(i)],
            "voxels": np.unpackbits(vox[obj])[: r**3].reshape(r, r, r),
            "category": self.objects[obj]["category"],
            "category_index": int(self.category_index[obj]),
            "object_id": self.objects[obj]["id"],
        }

"""The built-in synthetic ShapeNet: generated on first use (``r2n2.data.synth``) into a cache folder,
then read exactly like real ShapeNet (same layout, same taxonomy format)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from r2n2.data.categories import category_filter
from r2n2.data.formats import RESOLUTION
from r2n2.data.sources.base import ErrorPolicy, ObjectRecord
from r2n2.data.sources.shapenet import ShapeNetSource
from r2n2.data.synth.generate import DEFAULT_OBJECTS_PER_CATEGORY, DEFAULT_VIEWS, voxel_dir

log = logging.getLogger(__name__)

# the generator's object-level split per category (Pix2Vox's ShapeNet.json is ~70/10/20)
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


class SyntheticSource:
    """Procedural ShapeNet-like objects, generated into ``root/synth-<parameters>/`` on first use.

    objects_per_category: at least this many objects per category; more are generated when the
        requested split sizes need them (e.g. 20,000/4,000/1,000 samples for ``experiment=paper``).
    The grids are voxelised at ``resolution`` (``data.resolution``, which ``R2N2DataModule`` sets):
    solid R^3 binvox files in ``ShapeNetVox<R>/``, the folder named ``...-r<R>`` above 32.
    """

    voxel_key = None
    resolution = RESOLUTION

    def __init__(
        self,
        root: str,
        objects_per_category: int = DEFAULT_OBJECTS_PER_CATEGORY,
        views: int = DEFAULT_VIEWS,
        seed: int = 0,
        categories: list[str] | None = None,
        workers: int | None = None,
    ):
        self.root = Path(root).expanduser()
        self.objects_per_category, self.views, self.seed = objects_per_category, views, seed
        self.categories = category_filter(categories)
        self.workers = workers

    def _num_categories(self) -> int:
        from r2n2.data.categories import R2N2_CATEGORIES

        return len(R2N2_CATEGORIES) if self.categories is None else len(self.categories)

    def objects_needed(self, sizes: dict[str, int | None]) -> int:
        """Objects per category: the configured number, or more if a requested split size needs it."""
        n = self.objects_per_category
        per_object = self.views * self._num_categories()
        for split, size in sizes.items():
            if size:  # a split with fraction f holds about floor(f * n) objects per category
                n = max(n, math.ceil((math.ceil(size / per_object) + 1) / SPLIT_FRACTIONS[split]))
        return n

    def folder(self, sizes: dict[str, int | None]) -> Path:
        cats = "" if self.categories is None else "-" + "_".join(sorted(self.categories))
        res = "" if self.resolution == RESOLUTION else f"-r{self.resolution}"
        return self.root / f"synth-n{self.objects_needed(sizes)}-v{self.views}-s{self.seed}{cats}{res}"

    def prepare(self, sizes: dict[str, int | None]) -> None:
        """Generate the set, or regenerate it if its generator or parameters changed (synth.json)."""
        from r2n2.data.synth import generate_dataset
        from r2n2.data.synth.generate import made_with, parameters, resolve_categories

        folder = self.folder(sizes)
        n = self.objects_needed(sizes)
        synsets = resolve_categories(self.categories)
        if made_with(folder) != parameters(n, self.views, self.seed, synsets, self.resolution):
            log.info("generating the synthetic dataset (%d objects per category) into %s", n, folder)
        # the folder is ours (named by the parameters): an outdated set in it is replaced
        generate_dataset(
            folder,
            objects_per_category=n,
            views=self.views,
            seed=self.seed,
            categories=self.categories,
            workers=self.workers,
            overwrite=True,
            resolution=self.resolution,
        )

    def describe(self) -> dict:
        return {
            "kind": "synthetic",
            "root": str(self.root.resolve()),
            "objects_per_category": self.objects_per_category,
            "views": self.views,
            "seed": self.seed,
            "categories": self.categories,
        }

    def fingerprint(self, sizes: dict[str, int | None] | None = None) -> str:
        return self._shapenet(sizes).fingerprint()

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None] | None = None) -> list[ObjectRecord]:
        return self._shapenet(sizes).records(errors)

    def _shapenet(self, sizes: dict[str, int | None] | None) -> ShapeNetSource:
        """The generated set, read as the ShapeNet layout it is written in."""
        return ShapeNetSource(self.folder(sizes or {}), taxonomy="ShapeNet.json", voxel_dir=voxel_dir(self.resolution))

"""``R2N2DataModule``: any source -> object-level splits -> packed caches -> DataLoaders."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import BatchSampler, DataLoader

from r2n2.data import device as on_device
from r2n2.data.cache import Plan, cache_key, ensure_packed
from r2n2.data.dataset import PackedDataset
from r2n2.data.errors import DataError
from r2n2.data.formats import RESOLUTION, check_resolution
from r2n2.data.samplers import EpochBatchSampler, EpochShuffleSampler, ShardSampler
from r2n2.data.sources.base import SPLITS, ErrorPolicy, Source
from r2n2.data.splits import LEGACY_SPLIT_VERSION, assign_splits, check_split_version, select_samples
from r2n2.data.transforms import Augment, to_images
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)


def collate(items: list[dict]) -> dict:
    """Stack a list of ``PackedDataset`` items into a batch (see ``R2N2DataModule``). Images stay
    ``uint8``: :func:`r2n2.data.transforms.to_images` makes them float on the device."""
    batch = {
        "rgba": torch.from_numpy(np.stack([it["rgba"] for it in items])),  # numpy: faster than torch.stack
        "voxels": torch.from_numpy(np.stack([it["voxels"] for it in items])),
        "category": [it["category"] for it in items],
        "category_index": torch.tensor([it["category_index"] for it in items]),
        "object_id": [it["object_id"] for it in items],
    }
    if "seed" in items[0]:
        batch["seed"] = int(items[0]["seed"])
    return batch


class R2N2DataModule(L.LightningDataModule):
    """Splits, caches and loads a dataset source for training and evaluation.

    Batches are dicts: ``rgba (B, V, 127, 127, 4) uint8`` (``r2n2.data.transforms.to_images`` makes the
    normalised float images; inside Lightning this datamodule's ``on_after_batch_transfer`` does it on
    the device), ``voxels (B, R, R, R) uint8`` {0, 1} (R = ``resolution``), ``category`` (names), ``category_index (B,)
    int``, ``object_id`` (strings) and, in training batches only, ``seed`` (int): the batch's seed for
    its augmentation. Every random
    number of a training batch (order, view count, extra views, augmentation) follows from
    (order_seed, epoch, rank, batch index), whatever ``num_workers`` and ``persistent_workers`` are.

    source: a ``Source`` (``shapenet``, ``manifest`` or ``synthetic``).
    splits: samples per split, e.g. ``{train: 20000, val: 4000, test: 1000}``; None = all.
    split_fractions: object fractions for sources that do not fix the split themselves.
    seed: the split's seed (which objects and samples each split gets).
    split_version: how objects are split (``r2n2.data.splits``): 2 (what
        ``conf/data/_base.yaml`` sets) puts each object in a split by (seed, object_id) alone, so
        a subset or superset of the data keeps every shared object's split, and identifies manifest
        objects by their resolved voxel file; 1 (the default, what a run or checkpoint saved
        before the key existed was split with) is the earlier set-dependent split.
    order_seed: the training order's seed (order, view counts, augmentation draws); the configs pass
        the run's ``seed``, so ``seed=1`` changes it and keeps the split. None: ``seed`` (runs saved
        before this option existed).
    views_per_sample: views per training sample: an int, or ``[lo, hi]`` for a random number of
        distinct views per batch; ``eval_views`` is the fixed number for val and test.
    augment: False, True, or a dict of ``Augment`` fields (training split only; the module applies it).
    resolution: R, the side of the voxel grids: 32 (default, ShapeNetVox32 and the paper), 64 or 128;
        the source is told it (``Source.resolution``) and makes, pools or refuses its grids for it.
    device_data: the input path. "auto" (default): the packed splits on the training device where
        they fit (``r2n2.data.device``: on a GPU within ``device_data_fraction`` of its free memory,
        on the CPU always, reading the memory-mapped cache in place), each batch gathered there from
        the sampler's indices with no DataLoader; else the DataLoader path. True: on the device or an
        error; False: the DataLoader path. Both give the same batches, value for value.
    num_workers, pin_memory, persistent_workers: the DataLoader path's (pin_memory None pins batches
        when the trainer runs on CUDA).
    The loaders bring their own samplers (``r2n2.data.samplers``): run the Trainer with
    ``use_distributed_sampler=False`` so that Lightning does not replace them.
    on_error: ``raise`` on bad input, or ``skip`` bad samples and report them.
    verify_cache: also check every cached image's CRC-32 when a cache is opened (reads it whole);
        by default each image is checked when it is read, and opening reads none of them.
    """

    def __init__(
        self,
        source: Source,
        splits: dict | None = None,
        split_fractions: dict | None = None,
        seed: int = 0,
        split_version: int = LEGACY_SPLIT_VERSION,
        order_seed: int | None = None,
        views_per_sample: int | list[int] = 1,
        eval_views: int = 1,
        augment: bool | dict = False,
        image_size: int = 127,
        resolution: int = RESOLUTION,
        cache_dir: str = "data/cache",
        on_error: str = "raise",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        pack_workers: int | None = None,
        verify_cache: bool = False,
        device_data: bool | str = "auto",
        device_data_fraction: float = 0.5,
    ):
        super().__init__()
        self.source = source
        self.sizes = {s: (splits or {}).get(s) for s in SPLITS}
        self.fractions = dict(split_fractions or {"train": 0.7, "val": 0.1, "test": 0.2})
        self.seed = seed
        self.split_version = check_split_version(split_version)
        if hasattr(source, "split_version"):  # sources whose object identity is versioned (manifest)
            source.split_version = self.split_version
        self.resolution = check_resolution(resolution)
        source.resolution = self.resolution  # the source makes, pools or refuses its grids for it
        self.order_seed = seed if order_seed is None else order_seed
        lo_hi = [views_per_sample] * 2 if isinstance(views_per_sample, int) else list(views_per_sample)
        if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"data.views_per_sample must be an int >= 1 or [lo, hi], got {views_per_sample}")
        self.train_views, self.eval_views = tuple(int(v) for v in lo_hi), int(eval_views)
        if self.eval_views < 1:
            raise ValueError(f"data.eval_views must be an int >= 1, got {eval_views}")
        if isinstance(augment, bool):
            self.augment = Augment() if augment else None
        else:
            self.augment = Augment(**dict(augment))
        self.image_size = image_size
        self.cache_dir = Path(cache_dir).expanduser()
        self.on_error = on_error
        ErrorPolicy(on_error)  # validate now, not at first use
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pack_workers = os.cpu_count() if pack_workers is None else pack_workers
        self.verify_cache = verify_cache
        if device_data not in ("auto", True, False) or not 0 < float(device_data_fraction) <= 1:
            raise ValueError(
                f"data.device_data must be auto, true or false and data.device_data_fraction in (0, 1], "
                f"got {device_data!r} and {device_data_fraction!r}"
            )
        self.device_data, self.device_data_fraction = device_data, float(device_data_fraction)
        self.datasets: dict[str, PackedDataset] = {}
        self.categories: list[str] = []
        self._folder_paths: dict[str, Path] | None = None
        self._path: on_device.Choice | None = None  # the input path, chosen at the first loader
        self._on_device: dict[str, on_device.DeviceSplit] = {}

    # -- planning ---------------------------------------------------------------------------
    def _views(self, split: str) -> int:
        return self.train_views[1] if split == "train" else self.eval_views

    def _plans(self) -> dict[str, Plan]:
        """List the source and plan every split (what a cache is built from)."""
        errors = ErrorPolicy(self.on_error)
        records = self.source.records(errors, self.sizes)
        errors.write(self.cache_dir / "skipped-records.json", "dataset listing")
        if not records:
            where = getattr(self.source, "root", None) or getattr(self.source, "path", None)
            raise DataError(where, f"no samples found (source {self.source.describe()['kind']})")
        self.categories = sorted({r.category for r in records})
        by_split = assign_splits(records, self.fractions, self.seed, self.split_version)
        plans = {}
        for split in SPLITS:
            samples = select_samples(by_split[split], self.sizes[split], self.seed, split)
            if samples:
                plans[split] = Plan.make(by_split[split], samples, all_views=self._views(split) > 1)
        return plans

    def _folders(self) -> dict[str, Path]:
        """The packed cache folder of every non-empty split, building those that are missing.

        A later run lists nothing: the source's fingerprint (``Source.fingerprint``: for ShapeNet its
        folders' modification times) and the split parameters name the caches and a small summary
        (``splits-<key>.json``: the categories and each split's sample count); only a change of the
        source or of the parameters lists the source and packs again."""
        if self._folder_paths is not None:
            return self._folder_paths
        base = {
            "source": self.source.describe(),
            "fingerprint": self.source.fingerprint(self.sizes),
            "fractions": self.fractions,
            "seed": self.seed,
            "split_version": self.split_version,
            "on_error": self.on_error,
        }
        summary_path = self.cache_dir / f"splits-{cache_key({**base, 'sizes': self.sizes}, {})}.json"
        plans: dict[str, Plan] | None = None

        def planned() -> dict[str, Plan]:
            nonlocal plans
            if plans is None:
                plans = self._plans()
            return plans

        try:
            summary = json.loads(summary_path.read_text())
            categories, counts = list(summary["categories"]), dict(summary["splits"])
        except (OSError, ValueError, KeyError, TypeError):  # absent (first run), or damaged: list again
            categories, counts = None, None
        if counts is None:
            counts = {split: len(plan.samples) for split, plan in planned().items()}
            categories = self.categories
            with atomic_write(summary_path, "w") as f:
                json.dump({"categories": categories, "splits": counts}, f)
        self.categories = categories
        self._folder_paths = {
            split: ensure_packed(
                self.cache_dir,
                split,
                {**base, "size": self.sizes[split]},
                lambda split=split: planned()[split],
                self._pack_config(split),
                ErrorPolicy(self.on_error),
                self.pack_workers,
                self.verify_cache,
            )
            for split in SPLITS
            if counts.get(split)
        }
        return self._folder_paths

    def min_views(self, split: str) -> int:
        """The number of views, in the source, of the object with the fewest in ``split`` (0 if it is
        empty or absent)."""
        self.setup()
        return self.datasets[split].min_views() if split in self.datasets else 0

    def _pack_config(self, split: str) -> dict:
        return {
            "image_size": self.image_size,
            "resolution": self.resolution,
            "on_error": self.on_error,
            "voxel_key": self.source.voxel_key,
            "all_views": self._views(split) > 1,
        }

    # -- Lightning hooks --------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate (synthetic) and pack every split once; Lightning runs this on rank 0 only."""
        self.source.prepare(self.sizes)
        self._folders()

    def setup(self, stage: str | None = None) -> None:
        """Open the packed splits (packing any that ``prepare_data`` did not)."""
        if self.datasets:
            return
        for split, folder in self._folders().items():
            self.datasets[split] = PackedDataset(folder, self._views(split), self.categories, seed=self.seed)
        log.info("splits: %s", {s: len(d) for s, d in self.datasets.items()})

    @property
    def _device(self) -> torch.device:
        """The trainer's device (the CPU without a trainer)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def input_path(self) -> on_device.Choice:
        """The input path of this run (chosen once, for all splits, on the trainer's device) and why."""
        if self._path is None:
            device = self._device
            self._path = on_device.choose(
                self.device_data, list(self.datasets.values()), device, self.device_data_fraction
            )
            if self._path.on_device:
                log.info("input path: the splits on %s, batches gathered there (%s)", device, self._path.reason)
            else:
                log.info("input path: DataLoader, %d worker process(es) (%s)", self.num_workers, self._path.reason)
        return self._path

    def _device_split(self, split: str) -> on_device.DeviceSplit:
        if split not in self._on_device:
            self._on_device[split] = on_device.DeviceSplit(self.datasets[split], self._device)
        return self._on_device[split]

    def _loader(self, split: str, train: bool) -> DataLoader | on_device.DeviceBatches:
        if split not in self.datasets:
            raise ValueError(f"no {split} split: its size is 0 or the source has no {split} objects")
        dataset = self.datasets[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if train:
            sampler = EpochShuffleSampler(len(dataset), self.order_seed, self._next_epoch(), rank, world)
            batches = EpochBatchSampler(
                sampler, self.batch_size, self.train_views, drop_last=len(sampler) > self.batch_size
            )
        else:
            batches = BatchSampler(ShardSampler(len(dataset), rank, world), self.eval_batch_size, drop_last=False)
        if self.input_path().on_device:
            return on_device.DeviceBatches(self._device_split(split), batches)
        pin = self.pin_memory
        if pin is None:
            pin = trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)
        # a private generator: without one, every new iterator draws its workers' base seed from the
        # global RNG, shifting dropout masks differently in a resumed run (workers draw nothing random)
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.order_seed),
        )

    def _next_epoch(self) -> int:
        """The epoch Lightning will train next, known when it builds the loader. On resume, Lightning
        builds the loader (and worker processes draw its first batches) before it calls ``set_epoch``,
        while ``trainer.current_epoch`` still reads the checkpoint's count of *completed* epochs. The
        fit loop's ``processed`` count is the next epoch for a checkpoint written at a training epoch's
        end (last.ckpt); one written at validation end (best.ckpt) has finished its last batch but not
        yet counted the epoch, which Lightning counts right after this (``FitLoop.reset``)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        loop = trainer.fit_loop
        progress = loop.epoch_progress.current
        finished = loop.restarting and loop.epoch_loop.batch_progress.is_last_batch
        return int(progress.processed) + int(finished and progress.processed == progress.completed)

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        """Move the batch's tensors to ``device`` (no-ops on the device path), leaving its lists of
        names alone: Lightning's generic transfer walks every string of them, ~0.4 ms a step."""
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """On the device, for the whole batch: ``rgba (B, V, S, S, 4) uint8`` -> ``images (B, V, 3, S, S)
        float``, augmented in training batches (those carry their ``seed``) when ``augment`` is on."""
        if "rgba" in batch and "images" not in batch:
            augment, generator = None, None
            if self.augment is not None and "seed" in batch:
                augment = self.augment
                generator = torch.Generator(device=batch["rgba"].device).manual_seed(batch["seed"])
            batch["images"] = to_images(batch["rgba"], augment, generator)
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

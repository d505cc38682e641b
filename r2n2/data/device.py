"""Data on the device: a packed split held on the training device, each batch gathered there by the
sampler's indices, with no DataLoader, worker processes, pinned copies or inter-process traffic per
step (airbench's way of keeping a GPU busy with a small model).

The batches are the DataLoader path's, value for value: the same samplers give the order, the view
counts and the batch seeds (``r2n2.data.samplers``), the same ``PackedDataset.view_slots`` choose the
extra views, the images are the same decoded bytes and the voxels are unpacked with numpy's bit order.

Where it applies (``choose``): on a CUDA device when the split's decoded images and packed voxels
take at most ``fraction`` of the device's free memory (``data.device_data_fraction``, default 0.5:
the network, its activations and the optimiser need the rest); there the images are decoded into a
device tensor the first time a batch needs them (the first epoch decodes, later ones only gather), so
a start does not wait for the whole split. On the CPU it always applies: each batch's images are
decoded from the compressed cache as it is gathered, and memory does not grow with the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from r2n2.data.dataset import PackedDataset
from r2n2.data.samplers import SampleKey

log = logging.getLogger(__name__)


@dataclass
class Choice:
    """Whether a split goes on the device, and why (the run's log says it)."""

    on_device: bool
    reason: str


def choose(setting: bool | str, datasets: list[PackedDataset], device: torch.device, fraction: float) -> Choice:
    """Decide the input path for ``datasets`` on ``device``.

    setting: ``data.device_data``: "auto" (on the device where it fits), True (on the device,
        an error where it does not fit), False (the DataLoader path).
    """
    if setting not in ("auto", True, False):
        raise ValueError(f"data.device_data must be auto, true or false, got {setting!r}")
    if setting is False:
        return Choice(False, "data.device_data=false")
    need = sum(d.decoded_bytes() for d in datasets)
    if device.type == "cpu":
        return Choice(True, "the CPU: each batch decoded from the cache as it is gathered, no copy of the split held")
    if device.type != "cuda":
        if setting is True:
            raise ValueError(f"data.device_data=true: no on-device path for a {device.type} device")
        return Choice(False, f"no on-device path for a {device.type} device")
    free = torch.cuda.mem_get_info(device)[0]
    fits = need <= fraction * free
    why = (
        f"the splits take {need / 2**30:.2f} GiB, {'within' if fits else 'over'} "
        f"data.device_data_fraction={fraction:g} of the {free / 2**30:.1f} GiB free on {device}"
    )
    if setting is True and not fits:
        raise ValueError(f"data.device_data=true, but {why}: lower data.splits or set data.device_data=auto")
    return Choice(fits, why)


def _readonly(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` of a read-only memory map, without its warning: nothing here writes to it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class DeviceSplit:
    """One ``PackedDataset`` with its bit-packed voxels ``(M, ceil(R^3 / 8)) uint8`` on ``device`` and
    its images gathered there.

    resident: hold the decoded images ``(N_img, S, S, 4) uint8`` on ``device``, each decoded the first
    time a batch needs it (the default on CUDA); False decodes every batch's images as it is gathered
    (the default on the CPU, where the device is the host: no copy of the split is held).

    ``batch(keys)`` returns what ``collate`` makes of ``[dataset[k] for k in keys]``, on the device:
    ``rgba (B, V, S, S, 4) uint8``, ``voxels (B, R, R, R) uint8``, ``category_index (B,) int64``,
    ``category`` and ``object_id`` (lists of str), and ``seed`` (int) for training keys.
    """

    def __init__(self, dataset: PackedDataset, device: torch.device, resident: bool | None = None):
        self.dataset, self.device = dataset, device
        vox = dataset.voxel_bits()
        host = _readonly(vox) if not vox.flags.writeable else torch.from_numpy(np.asarray(vox))
        self.voxels = host if device.type == "cpu" else host.to(device)
        self.resident = device.type != "cpu" if resident is None else resident
        self.images: torch.Tensor | None = None
        if self.resident:
            s = dataset.size
            self.images = torch.empty((dataset.num_images, s, s, 4), dtype=torch.uint8, device=device)
            self._decoded = np.zeros(dataset.num_images, bool)
        self.obj = dataset.samples[:, 0]
        self.category_index = torch.from_numpy(dataset.category_index.astype(np.int64))
        # np.unpackbits' order: the first voxel is the most significant bit of the first byte
        self._bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=device)

    def __len__(self) -> int:
        return len(self.dataset)

    def _gather(self, slots: np.ndarray) -> torch.Tensor:
        """Images ``slots (B, V)`` -> ``(B, V, S, S, 4) uint8`` on the device."""
        flat = slots.reshape(-1)
        if not self.resident:
            return torch.from_numpy(self.dataset.images(flat)).view(*slots.shape, *self.images_shape)
        missing = np.unique(flat[~self._decoded[flat]])
        if len(missing):  # decoded once, then kept on the device
            fresh = torch.from_numpy(self.dataset.images(missing)).to(self.device)
            self.images.index_copy_(0, torch.from_numpy(missing).to(self.device), fresh)
            self._decoded[missing] = True
        index = torch.from_numpy(flat).to(self.device, non_blocking=True)
        return self.images.index_select(0, index).view(*slots.shape, *self.images_shape)

    @property
    def images_shape(self) -> tuple[int, int, int]:
        return (self.dataset.size, self.dataset.size, 4)

    def batch(self, keys: list) -> dict:
        slots = self.dataset.batch_slots(keys)
        idx = np.fromiter((k.index if isinstance(k, SampleKey) else k for k in keys), np.int64, len(keys))
        obj = self.obj[idx]
        b, r = len(obj), self.dataset.resolution
        obj_t = torch.from_numpy(obj).to(self.device, non_blocking=True)
        # (B, bytes, 8) bits, 0 or 1, as bool then viewed as uint8 (no copy)
        bits = (self.voxels.index_select(0, obj_t).unsqueeze(-1) & self._bits) != 0
        objects = self.dataset.objects
        batch = {
            "rgba": self._gather(slots),
            "voxels": bits.view(b, -1)[:, : r**3].view(torch.uint8).view(b, r, r, r),
            "category": [objects[o]["category"] for o in obj],
            "category_index": self.category_index[torch.from_numpy(obj)].to(self.device, non_blocking=True),
            "object_id": [objects[o]["id"] for o in obj],
        }
        if keys and isinstance(keys[0], SampleKey):
            batch["seed"] = int(keys[0].seed)
        return batch


class DeviceBatches:
    """An iterable of device batches for Lightning, in the order of ``batch_sampler`` (a sampler of
    lists of keys: ``EpochBatchSampler`` for training, ``BatchSampler(ShardSampler)`` for evaluation).

    Lightning calls ``batch_sampler.sampler.set_epoch`` before each training epoch, as for a
    DataLoader, and reads ``len()`` for the epoch's length.
    """

    def __init__(self, split: DeviceSplit, batch_sampler):
        self.split, self.batch_sampler = split, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for keys in self.batch_sampler:
            yield self.split.batch(keys)

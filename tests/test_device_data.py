"""Data on the device (r2n2/data/device.py): the same batches as the DataLoader path, value for
value, for training (order, view counts, extra views, augmentation draws) and evaluation, with the
DataLoader path's default settings (2 persistent workers) as the reference; and the path's choice."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import run_train, tiny

from r2n2.data import device as on_device
from r2n2.data.datamodule import R2N2DataModule
from r2n2.data.sources import ShapeNetSource

FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def _dm(shared_data, cache_dir, **kwargs) -> R2N2DataModule:
    args = dict(
        split_fractions=FRACTIONS,
        seed=0,
        batch_size=4,
        pack_workers=0,
        cache_dir=os.fspath(cache_dir),
        num_workers=2,
        persistent_workers=True,
    )  # conf/data/_base.yaml's DataLoader settings
    dm = R2N2DataModule(ShapeNetSource(os.fspath(shared_data / "r2n2-sample")), **{**args, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("extra", [{}, {"augment": True, "views_per_sample": [1, 5]}], ids=["default", "augment-1-5"])
def test_device_batches_equal_the_dataloaders(shared_data, tmp_path, extra):
    loader_dm = _dm(shared_data, tmp_path / "cache", device_data=False, **extra)
    device_dm = _dm(shared_data, tmp_path / "cache", **extra)  # device_data: auto (the default)
    assert device_dm.input_path().on_device and not loader_dm.input_path().on_device
    for epoch in (0, 1):
        ours, theirs = device_dm.train_dataloader(), loader_dm.train_dataloader()
        assert isinstance(ours, on_device.DeviceBatches) and isinstance(theirs, torch.utils.data.DataLoader)
        for loader in (ours, theirs):  # as Lightning does before every training epoch
            loader.batch_sampler.sampler.set_epoch(epoch)
        pairs = list(zip(ours, theirs, strict=True))
        assert len(pairs) == len(ours) == len(theirs) > 2
        for a, b in pairs:
            _same(a, b)
            # the images each path trains on, augmentation included (drawn from the batch's seed)
            a, b = device_dm.on_after_batch_transfer(a, 0), loader_dm.on_after_batch_transfer(b, 0)
            assert torch.equal(a["images"], b["images"])
        if extra:  # the draws this case exists for did happen
            assert len({p[0]["rgba"].shape[1] for p in pairs}) > 1
    for name in ("val_dataloader", "test_dataloader"):
        for a, b in zip(getattr(device_dm, name)(), getattr(loader_dm, name)(), strict=True):
            _same(a, b)


def test_multi_view_evaluation_batches_equal_the_dataloaders(shared_data, tmp_path):
    loader_dm = _dm(shared_data, tmp_path / "cache", device_data=False, eval_views=3)
    device_dm = _dm(shared_data, tmp_path / "cache", eval_views=3)
    for a, b in zip(device_dm.val_dataloader(), loader_dm.val_dataloader(), strict=True):
        assert a["rgba"].shape[1] == 3
        _same(a, b)


def test_the_choice_of_path_and_its_reasons(shared_data, tmp_path):
    dm = _dm(shared_data, tmp_path / "cache")
    splits = list(dm.datasets.values())
    cpu = on_device.choose("auto", splits, torch.device("cpu"), 0.5)
    assert cpu.on_device and "each batch decoded from the cache" in cpu.reason
    assert not on_device.choose(False, splits, torch.device("cpu"), 0.5).on_device
    with pytest.raises(ValueError, match="data.device_data must be auto, true or false"):
        on_device.choose("yes", splits, torch.device("cpu"), 0.5)
    with pytest.raises(ValueError, match="data.device_data must be auto, true or false"):
        R2N2DataModule(ShapeNetSource(os.fspath(shared_data / "r2n2-sample")), device_data="gpu")
    # on the CPU the batches are decoded as they are gathered: no copy of the split is held
    split = on_device.DeviceSplit(splits[0], torch.device("cpu"))
    assert not split.resident and split.images is None


def test_resident_images_equal_the_decoded_ones_and_are_decoded_once(shared_data, tmp_path):
    """The images held on the device (CUDA's default; forced here on the CPU) are filled the first
    time a batch needs them and give the same batches as decoding every batch."""
    dm = _dm(shared_data, tmp_path / "cache", views_per_sample=[1, 3], augment=True)
    dataset = dm.datasets["train"]
    held = on_device.DeviceSplit(dataset, torch.device("cpu"), resident=True)
    fresh = on_device.DeviceSplit(dataset, torch.device("cpu"))
    assert held.images.shape == (dataset.num_images, 127, 127, 4) and not held._decoded.any()
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        loader.batch_sampler.sampler.set_epoch(epoch)
        for keys in loader.batch_sampler:
            _same(held.batch(keys), fresh.batch(keys))
        if epoch == 0:  # every image the epoch asked for, and only those, is now on the device
            asked = np.unique(np.concatenate([dataset.batch_slots(k).ravel() for k in loader.batch_sampler]))
            assert held._decoded.sum() == len(asked) and held._decoded[asked].all()


@pytest.mark.slow
def test_a_run_logs_its_input_path_and_trains_as_the_dataloader_path(data_dir, tmp_path):
    """Two real train.py runs of the default config (shrunk), device path and DataLoader path with
    2 workers: the same weights' figures, exactly; the log says which path each took and why."""
    base = [o for o in tiny(data_dir) if not o.startswith("data.num_workers")] + ["logger=none"]
    runs = {}
    for name, extra in (("device", []), ("loader", ["data.device_data=false", "data.num_workers=2"])):
        proc = run_train(base + extra, tmp_path / name)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text()), proc.stdout + proc.stderr
    assert "input path: the splits on cpu" in runs["device"][1]
    assert "input path: DataLoader, 2 worker process(es) (data.device_data=false)" in runs["loader"][1]
    for key in ("train/loss", "val/iou_best", "test/iou", "test/loss"):
        assert runs["device"][0][key] == runs["loader"][0][key], key

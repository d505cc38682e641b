"""Object-level splits (``data.split_version``): version 2 puts each object in a split by (seed, its
object_id) alone, so a subset or superset of the data keeps every shared object's split; version 1,
what a config without the key means (runs and checkpoints saved before it), is the earlier
set-dependent split, kept exactly so that those runs resume and evaluate on their own split."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from r2n2.data.datamodule import R2N2DataModule
from r2n2.data.sources import ErrorPolicy, ManifestSource, ObjectRecord, ShapeNetSource
from r2n2.data.sources.base import SPLITS
from r2n2.data.splits import assign_splits, object_position, select_samples, split_mismatch, split_of, split_version_of

CONF = Path(__file__).resolve().parents[1] / "conf"
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
CATEGORIES = ["airplane", "bench", "car", "chair", "lamp", "rifle", "watercraft"]


# --- helpers ----------------------------------------------------------------------------------------


def records(n_per_category: dict[str, int], views: int = 3, start: int = 0) -> list[ObjectRecord]:
    return [
        ObjectRecord(f"{cat}/{i:03d}", cat, tuple(f"{cat}/{i}/{v}.png" for v in range(views)), f"{cat}/{i}.npy")
        for cat, n in n_per_category.items()
        for i in range(start, start + n)
    ]


def where(split: dict[str, list[ObjectRecord]]) -> dict[str, str]:
    """object_id -> its split."""
    return {r.object_id: s for s, objs in split.items() for r in objs}


def moved(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k])


# --- (a) version 2: an object's split does not depend on what else is listed -----------------------


def test_v2_keeps_every_shared_objects_split_in_a_subset_and_a_superset():
    """The issue's cases: 30 chairs alone or among 7 categories (v1: 11 move, 5 from train to test),
    and one added car, which under v1 moved objects of other categories too."""
    base = records({"chair": 30, "car": 20, "lamp": 12})
    cases = {
        "chairs alone": [r for r in base if r.category == "chair"],
        "7 categories": base + records({c: 30 for c in CATEGORIES if c not in ("chair", "car", "lamp")}),
        "one car more": base + records({"car": 1}, start=20),
        "both": base + records({"car": 1}, start=20) + records({"sofa": 40, "table": 9}),
        "reordered": [base[i] for i in np.random.default_rng(3).permutation(len(base))],
    }
    for seed in (0, 1, 7):
        ref = where(assign_splits(base, FRACTIONS, seed, version=2))
        for name, other in cases.items():
            got = where(assign_splits(other, FRACTIONS, seed, version=2))
            assert not moved(ref, got), (seed, name, moved(ref, got))
            # and each shared object is where split_of says, from (seed, object_id) alone
            assert all(got[k] == split_of(seed, k, FRACTIONS) for k in got)
    # the same cases under version 1 (the earlier split) move objects: what this test guards against
    ref = where(assign_splits(base, FRACTIONS, 0, version=1))
    for name in ("chairs alone", "7 categories", "one car more"):
        assert moved(ref, where(assign_splits(cases[name], FRACTIONS, 0, version=1))), name
    assert "chair/006" in moved(ref, where(assign_splits(cases["one car more"], FRACTIONS, 0, version=1)))
    alone = where(assign_splits(records({"chair": 30}), FRACTIONS, 0, version=1))
    among = where(assign_splits(records({c: 30 for c in CATEGORIES}), FRACTIONS, 0, version=1))
    assert len(moved(alone, among)) == 11 and sum(alone[k] == "train" and among[k] == "test" for k in alone) == 5


def test_v2_is_seeded_keeps_fixed_splits_and_a_stable_hash():
    objs = records({"chair": 50, "car": 50})
    a, b, c = (where(assign_splits(objs, FRACTIONS, s, version=2)) for s in (0, 0, 1))
    assert a == b and a != c and len(a) == 100
    # a source's own split (taxonomy file, manifest column) is kept whatever the version
    fixed = [ObjectRecord(r.object_id, r.category, r.images, r.voxels, "test") for r in objs[:10]] + objs[10:]
    got = where(assign_splits(fixed, FRACTIONS, 0, version=2))
    assert all(got[r.object_id] == "test" for r in fixed[:10])
    assert all(got[r.object_id] == a[r.object_id] for r in objs[10:])
    # blake2b of "<seed>/<object_id>": the same number in any process, Python or platform (not hash())
    assert object_position(0, "03001627/1a6f615e8b1b5ae4dbbc9440457e303e") == 0.175916645800821
    assert object_position(3, "chair/007") == 0.4054272486553825
    assert [split_of(0, f"chair/{i:03d}", FRACTIONS) for i in range(8)] == [a[f"chair/{i:03d}"] for i in range(8)]
    assert 0 <= object_position(0, "x") < 1 and object_position(0, "x") != object_position(1, "x")


# --- (b) the fractions hold ----------------------------------------------------------------------


def test_v2_split_fractions_hold_over_many_objects():
    n = {"chair": 6000, "car": 3000, "lamp": 1000}
    split = assign_splits(records(n, views=1), FRACTIONS, 0, version=2)
    for cat, count in n.items():
        for s, f in FRACTIONS.items():
            got = sum(r.category == cat for r in split[s])
            assert abs(got - f * count) < 4 * np.sqrt(f * (1 - f) * count), (cat, s, got)  # 4 sigma
    # other fractions, unnormalised, and an empty split
    split = assign_splits(records({"chair": 4000}, views=1), {"train": 3, "val": 0, "test": 1}, 5, version=2)
    assert not split["val"] and abs(len(split["train"]) - 3000) < 4 * np.sqrt(0.75 * 0.25 * 4000)
    # every object in exactly one split
    listed = sorted(r.object_id for v in split.values() for r in v)
    assert listed == sorted(r.object_id for r in records({"chair": 4000}))


def test_an_unknown_split_version_is_refused_naming_the_key(tmp_path):
    for bad in (0, 3, "2", True):
        with pytest.raises(ValueError, match=r"data\.split_version must be one of \[1, 2\]"):
            assign_splits(records({"chair": 3}), FRACTIONS, 0, version=bad)
    with pytest.raises(ValueError, match=r"data\.split_version"):
        R2N2DataModule(ShapeNetSource(os.fspath(tmp_path)), split_version=3, cache_dir=os.fspath(tmp_path))


# --- (c) version 1 is the earlier split, exactly -----------------------------------------------------


# what the split of commit 9b2fc8d (before split_version) gave, recorded by running that commit's code
V1_DIGEST = "58217ddecaadd8ceb5411d8b03b00c82d4d4a95c04a7db1d79e4b0281f3777e7"
V1_SMALL = {  # records({"chair": 30, "car": 20, "lamp": 12}), FRACTIONS, seed 0
    "val": ["car/017", "car/018", "chair/006", "chair/018", "chair/019", "chair/027", "lamp/004"],
    "test": [
        "car/001",
        "car/009",
        "car/014",
        "car/015",
        "chair/002",
        "chair/005",
        "chair/008",
        "chair/012",
        "chair/024",
        "lamp/003",
        "lamp/009",
        "lamp/011",
    ],
}
V1_SAMPLE = {"val": ["02828884/pix2voxkeras_bench"], "test": ["03001627/pix2voxkeras_chair"]}  # r2n2-sample, seed 0
V1_SAMPLE_TRAIN_PICK = [(0, 0), (0, 1), (0, 2), (0, 5), (0, 7), (0, 8), (0, 12), (0, 16)]  # its first 8 of 60


def v1_digest(assign=assign_splits) -> str:
    """A hash of the splits and sample picks of 30 random sets (sizes, fractions, seeds, view counts)."""
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for _ in range(30):
        n = {str(c): int(rng.integers(1, 40)) for c in rng.choice(CATEGORIES, int(rng.integers(1, 8)), replace=False)}
        objs = records(n, views=int(rng.integers(1, 6)))
        fractions = {s: float(f) for s, f in zip(SPLITS, rng.dirichlet([2, 1, 1]))}
        seed = int(rng.integers(0, 100))
        split = assign(objs, fractions, seed)
        for s in SPLITS:
            size = len(split[s]) and int(rng.integers(0, sum(len(r.images) for r in split[s]) + 1))
            h.update(json.dumps([s, [r.object_id for r in split[s]], select_samples(split[s], size, seed, s)]).encode())
    return h.hexdigest()


def test_v1_reproduces_the_earlier_split_and_sample_pick_exactly():
    assert v1_digest() == V1_DIGEST
    assert v1_digest(lambda *a: assign_splits(*a, version=1)) == V1_DIGEST
    got = assign_splits(records({"chair": 30, "car": 20, "lamp": 12}), FRACTIONS, 0)
    assert {s: [r.object_id for r in got[s]] for s in ("val", "test")} == V1_SMALL


def _v1_plan_ids(objs: list[ObjectRecord], sizes: dict, seed: int = 0) -> dict[str, tuple[list[str], list]]:
    """What split version 1 (pinned above) plans for ``objs``: per split (object ids, samples)."""
    out = {}
    for s, members in assign_splits(objs, FRACTIONS, seed, version=1).items():
        samples = select_samples(members, sizes[s], seed, s)
        if samples:
            used = sorted({o for o, _ in samples})
            out[s] = ([members[o].object_id for o in used], [(members[o].object_id, v) for o, v in samples])
    return out


def _plain_config(source: dict, cache: Path, **extra) -> dict:
    """A data config as a checkpoint's hyper_parameters["data"] of a run saved before split_version."""
    return {
        "_target_": "r2n2.data.datamodule.R2N2DataModule",
        "source": source,
        "splits": {"train": 60, "val": None, "test": 20},
        "split_fractions": FRACTIONS,
        "seed": 0,
        "batch_size": 4,
        "pack_workers": 0,
        "cache_dir": os.fspath(cache),
        **extra,
    }


def _plan_ids(dm: R2N2DataModule) -> dict[str, tuple[list[str], list]]:
    return {
        s: ([r.object_id for r in p.objects], [(p.objects[o].object_id, v) for o, v in p.samples])
        for s, p in dm._plans().items()
    }


def test_a_datamodule_from_a_config_without_the_key_splits_as_before(shared_data, tmp_path):
    """r2n2-eval / r2n2-predict and resume build the datamodule from a saved data config: one
    saved before split_version existed gets version 1, the split it was trained on."""
    root = shared_data / "r2n2-sample"
    source = {"_target_": "r2n2.data.sources.ShapeNetSource", "root": os.fspath(root)}
    dm = hydra.utils.instantiate(_plain_config(source, tmp_path / "cache"))
    assert dm.split_version == 1
    objs = ShapeNetSource(os.fspath(root)).records(ErrorPolicy("raise"))
    plans = _plan_ids(dm)
    assert plans == _v1_plan_ids(objs, {"train": 60, "val": None, "test": 20})
    assert {s: plans[s][0] for s in ("val", "test")} == V1_SAMPLE
    train_ids = plans["train"][0]
    assert [(train_ids.index(oid), v) for oid, v in plans["train"][1][:8]] == V1_SAMPLE_TRAIN_PICK
    v2 = hydra.utils.instantiate(_plain_config(source, tmp_path / "cache", split_version=2))
    assert v2.split_version == 2 and _plan_ids(v2) != _plan_ids(dm)
    assert split_version_of(_plain_config(source, tmp_path)) == 1 and split_version_of({"split_version": 2}) == 2


def test_the_config_sets_version_2_and_only_there(tmp_path):
    """conf/data/_base.yaml sets 2 for new runs (its value goes into the checkpoint); nothing fills
    it in for a config that lacks it: the datamodule's default is 1."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for overrides in (
            ["data=synthetic"],
            ["data=shapenet"],
            ["data=manifest", "data.source.path=x.csv"],
            ["data=pix3d"],
        ):
            assert compose("config", overrides).data.split_version == 2, overrides
        assert compose("eval", ["ckpt=x", "data=shapenet"]).data.split_version == 2
        old = compose("config", ["data=shapenet", f"data.source.root={tmp_path}", "~data.split_version"])
    assert "split_version" not in old.data
    dm = hydra.utils.instantiate(old.data, _recursive_=True)
    assert dm.split_version == 1


# --- (d) a real resume of a run folder saved before the key: its split is kept ---------------------


def _two_spellings_manifest(shared_data: Path, folder: Path) -> Path:
    """8 objects of 2 categories from real binvox and PNG files, paths relative to the CSV; the
    first voxel file is listed twice, once as ``vox/../vox/<name>``; no object_id, no split column."""
    vox = sorted((shared_data / "binvox").glob("*.binvox"))
    views = sorted((shared_data / "r2n2-sample" / "ShapeNetRendering").glob("*/*/rendering/0[0-3].png"))
    (folder / "vox").mkdir(parents=True)
    rows = ["image,voxels,category"]
    for i in range(8):
        name = f"{i}.binvox"
        shutil.copyfile(vox[i % len(vox)], folder / "vox" / name)
        spelled = f"vox/{name}" if i else "vox/../vox/0.binvox"
        rows.append(f"{os.path.relpath(views[2 * i], folder)},{spelled},{('chair', 'car')[i % 2]}")
    rows.append(f"{os.path.relpath(views[17], folder)},vox/0.binvox,chair")  # the first object's other spelling
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_resume_of_a_run_saved_without_the_key_keeps_its_split(shared_data, tmp_path):
    """A run folder as an earlier version wrote it (.hydra/config.yaml and the checkpoint's data
    config without split_version, on a manifest without object_id or split) is restored by
    ``resume=`` (r2n2.train.resume.restore_config) to version 1: the same object ids (path text: the twice
    spelled voxel file stays two objects) and the same split as before."""
    from r2n2.train.resume import restore_config

    csv = _two_spellings_manifest(shared_data, tmp_path / "data")
    run = tmp_path / "run"
    with initialize_config_dir(str(CONF), version_base="1.3"):
        args = [
            "data=manifest",
            f"data.source.path={csv}",
            f"paths.data_dir={tmp_path / 'd'}",
            "data.pack_workers=0",
            "data.num_workers=0",
            "logger=none",
            "trainer.max_epochs=3",
        ]
        saved = compose("config", [*args, "~data.split_version", f"paths.output_dir={run}"])
        cfg = compose("config", [*args, f"resume={run}"])
    assert "split_version" not in saved.data and cfg.data.split_version == 2
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    hp = {
        "net": OmegaConf.to_container(saved.model, resolve=True),
        "data": OmegaConf.to_container(saved.data, resolve=True),
    }
    torch.save(
        {"state_dict": {}, "hyper_parameters": hp, "epoch": 0, "global_step": 1}, run / "checkpoints" / "last.ckpt"
    )

    handlers = list(logging.getLogger().handlers)
    try:
        restored, ckpt = restore_config(cfg)
    finally:  # restore_config logs into the run's train.log too
        for h in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(h)
            h.close()
    assert ckpt == os.fspath(run / "checkpoints" / "last.ckpt") and "split_version" not in restored.data
    dm = hydra.utils.instantiate(restored.data, _recursive_=True)
    assert dm.split_version == 1 and dm.source.split_version == 1
    # the earlier ids: the voxel path as written, joined to the CSV's folder; the earlier split of them
    assert {r.object_id for p in dm._plans().values() for r in p.objects} == {
        os.fspath(csv.parent / "vox/../vox/0.binvox")
    } | {os.fspath(csv.parent / f"vox/{i}.binvox") for i in range(8)}
    old = ManifestSource(os.fspath(csv))
    old.split_version = 1
    assert _plan_ids(dm) == _v1_plan_ids(old.records(ErrorPolicy("raise")), dm.sizes)
    # a new run on the same data: split version 2, the twice spelled file one object
    new = hydra.utils.instantiate(cfg.data, _recursive_=True)
    assert new.split_version == 2 and len({r.object_id for p in new._plans().values() for r in p.objects}) == 8


# --- evaluating a checkpoint on another data config ----------------------------------------------------


def test_split_mismatch_says_when_a_checkpoints_training_objects_may_be_scored():
    src = {"_target_": "r2n2.data.sources.ShapeNetSource", "root": "/d", "categories": None}
    v1 = {"source": src, "seed": 0, "split_fractions": FRACTIONS}
    v2 = {**v1, "split_version": 2}
    assert split_mismatch(v1, v1) is None and split_mismatch(v2, v2) is None
    assert split_mismatch(None, v2) is None  # a checkpoint without a data record: nothing to compare
    # version 2: other categories or more objects keep the split; another seed or fractions do not
    assert split_mismatch(v2, {**v2, "source": {**src, "categories": ["chair"]}}) is None
    assert "data.seed" in split_mismatch(v2, {**v2, "seed": 1})
    other = {"train": 0.8, "val": 0, "test": 0.2}
    assert "data.split_fractions" in split_mismatch(v2, {**v2, "split_fractions": other})
    # a version 1 checkpoint: another version, or another object set, splits otherwise
    assert "data.split_version" in split_mismatch(v1, v2)
    assert "data.source" in split_mismatch(v1, {**v1, "source": {**src, "categories": ["chair"]}})


def test_eval_keeps_a_checkpoints_split_version_and_warns_of_a_leaking_data_config(caplog):
    """r2n2-eval ckpt=<saved before data.split_version> data=...: the checkpoint's version 1 is kept
    (the composed config says 2), and another object set under version 1 is warned about."""
    from omegaconf import OmegaConf

    from r2n2.cli.eval import _data_config

    trained = {"seed": 0, "source": {"_target_": "r2n2.data.sources.ShapeNetSource", "root": "/data/a"}}
    same = OmegaConf.create({"data": {"seed": 0, "split_version": 2, "source": dict(trained["source"])}})
    with caplog.at_level("WARNING"):
        assert _data_config(same, trained)["split_version"] == 1
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    other = OmegaConf.create(
        {"data": {"seed": 0, "split_version": 2, "source": {**trained["source"], "root": "/data/b"}}}
    )
    with caplog.at_level("WARNING"):
        assert _data_config(other, trained)["split_version"] == 1
    assert "may be in the evaluated split" in caplog.text and "data.source" in caplog.text
    assert _data_config(OmegaConf.create({}), trained) is trained  # no data=...: the checkpoint's own

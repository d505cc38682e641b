"""Object-level splits and sample selection.

A *sample* is an (object, view) pair. Splits are by object, so no object's views are in two splits
(an object is a source's record: Pix3D with Pix2Vox's ``Pix3D.json`` splits photos, so one 3D model
can be two records, one per split; see ``r2n2.data.sources.pix3d``); split sizes are counted in
samples (the seed report: 20,000 / 4,000 / 1,000).

Objects whose source does not fix their split are split by ``data.split_version``:

- **2** (``conf/data/_base.yaml``): an object's split follows from ``(data.seed, its object_id)``
  alone: a stable hash puts it at a point of [0, 1), which the fractions cut into train / val / test.
  The same object is in the same split in any set that lists it (a subset, a superset, other
  categories), so a checkpoint evaluated on more or less of the data (same seed and fractions)
  scores none of its training objects. Identity is the source's ``object_id``: ShapeNet
  ``<synset>/<model>``, Pix3D the model's path, a manifest its ``object_id`` column or else its
  resolved voxel file.
- **1** (runs and checkpoints saved before the key existed, whose configs lack it; the datamodule's
  default): each category shuffled by its position among the categories present and the merged list
  cut by the fractions. Kept so those runs resume and evaluate on exactly their split; an object's
  split moves when the listed set changes.

Sample selection (``select_samples``, for ``data.splits`` sizes) is the same in both versions.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict

import numpy as np

from r2n2.data.sources.base import SPLITS, ObjectRecord

SPLIT_VERSIONS = (1, 2)
#: what a config without ``split_version`` means: the splits of runs saved before it existed
LEGACY_SPLIT_VERSION = 1


def check_split_version(version) -> int:
    """``version`` as an int, or ``ValueError`` naming ``data.split_version`` and the choices."""
    if isinstance(version, bool) or version not in SPLIT_VERSIONS:
        raise ValueError(f"data.split_version must be one of {list(SPLIT_VERSIONS)}, got {version!r}")
    return int(version)


def split_version_of(data_cfg: dict | None) -> int:
    """The split version a saved data config (a run's ``data`` or a checkpoint's
    ``hyper_parameters["data"]``) was split with: 1 where it has no ``split_version``."""
    return int((data_cfg or {}).get("split_version") or LEGACY_SPLIT_VERSION)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def object_position(seed: int, object_id: str) -> float:
    """Where ``object_id`` falls in [0, 1) under ``seed`` (split version 2): a function of these
    two only, the same in every process and Python (blake2b, not ``hash()``)."""
    return (_hash64(f"{seed}/{object_id}") >> 11) / float(1 << 53)  # 53 bits: exactly < 1.0 as a float


def _cuts(fractions: dict[str, float]) -> list[float]:
    total = sum(fractions[s] for s in SPLITS)
    cuts = [float(c) for c in np.cumsum([fractions[s] / total for s in SPLITS])]
    # the last split with a share ends at 1.0 exactly (no rounding sliver for a split of fraction 0)
    return [1.0 if not any(fractions[s] for s in SPLITS[i + 1 :]) else c for i, c in enumerate(cuts)]


def _split_at(cuts: list[float], position: float) -> str:
    return SPLITS[min(bisect.bisect_right(cuts, position), len(SPLITS) - 1)]  # an empty split's cut is skipped


def split_of(seed: int, object_id: str, fractions: dict[str, float]) -> str:
    """The split version 2 gives ``object_id`` (whose source does not fix its split)."""
    return _split_at(_cuts(fractions), object_position(seed, object_id))


def assign_splits(
    records: list[ObjectRecord], fractions: dict[str, float], seed: int, version: int = LEGACY_SPLIT_VERSION
) -> dict[str, list[ObjectRecord]]:
    """Group objects by split. Objects whose source fixes the split keep it; the others are split
    by ``fractions`` (e.g. train 0.7, val 0.1, test 0.2) and ``seed``:

    version 2: each object by itself, by where ``(seed, object_id)`` hashes to in [0, 1)
        (``split_of``): the fractions hold per category up to sampling noise (a category of n
        objects gets about ``f * n`` in a split, give or take ``sqrt(f (1 - f) n)``, so a category of
        a few objects may miss a split).
    version 1: in a category-stratified order: each category is shuffled and its objects spread
        evenly over [0, 1), all categories are merged by that position, and the merged list is cut
        by the fractions (exact fractions, but an object's split depends on the whole set).
    """
    version = check_split_version(version)
    out: dict[str, list[ObjectRecord]] = {s: [] for s in SPLITS}
    free: dict[str, list[ObjectRecord]] = defaultdict(list)
    for r in records:
        (out[r.split] if r.split else free[r.category]).append(r)
    if version == 2:
        cuts = _cuts(fractions)
        for r in (r for objs in free.values() for r in objs):
            out[_split_at(cuts, object_position(seed, r.object_id))].append(r)
        return {s: sorted(v, key=lambda r: r.object_id) for s, v in out.items()}
    keyed = []
    for i, category in enumerate(sorted(free)):
        objs = sorted(free[category], key=lambda r: r.object_id)
        rng = np.random.default_rng([seed, i])
        order, jitter = rng.permutation(len(objs)), rng.random(len(objs))
        keyed += [((rank + jitter[rank]) / len(objs), objs[j]) for rank, j in enumerate(order)]
    keyed.sort(key=lambda kr: kr[0])
    total = sum(fractions[s] for s in SPLITS)
    cuts = np.round(np.cumsum([fractions[s] / total for s in SPLITS]) * len(keyed)).astype(int)
    for s, lo, hi in zip(SPLITS, np.r_[0, cuts[:-1]], cuts):
        out[s] += [r for _, r in keyed[lo:hi]]
    return {s: sorted(v, key=lambda r: r.object_id) for s, v in out.items()}


def select_samples(objects: list[ObjectRecord], size: int | None, seed: int, split: str) -> list[tuple[int, int]]:
    """Pick ``size`` (object index, view index) pairs from ``objects`` (None = all), sorted.

    The same in every split version: a seeded draw over the pairs' positions in ``objects``, so
    with a ``size`` another object set in the split (a subset or superset of the data) draws other
    samples, all of them from the split's own objects.

    Raises ``ValueError`` saying how many samples exist when more are asked for.
    """
    pairs = [(o, v) for o, rec in enumerate(objects) for v in range(len(rec.images))]
    if size is None:
        return pairs
    if size > len(pairs):
        raise ValueError(
            f"data.splits.{split}={size} asks for more samples than the {split} split has: "
            f"{len(pairs)} (object-view pairs of {len(objects)} objects)"
        )
    pick = np.random.default_rng([seed, SPLITS.index(split)]).choice(len(pairs), size, replace=False)
    return [pairs[i] for i in np.sort(pick)]


def split_mismatch(trained: dict | None, evaluated: dict) -> str | None:
    """Why scoring a checkpoint trained with data config ``trained`` (its ``hyper_parameters["data"]``)
    on the splits of ``evaluated`` may score objects it was trained on, or None where the objects that
    both list keep their split. Only objects whose source does not fix the split (no taxonomy file,
    no split column) can move; for a source that fixes every split this is a false alarm.

    Version 2 keeps an object's split whatever else is listed, so only another seed, other fractions
    or another version move objects; version 1 (a checkpoint saved before ``data.split_version``)
    also moves them when the source (the object set) differs.
    """
    if not trained:
        return None
    version, theirs = split_version_of(trained), split_version_of(evaluated)
    if version != theirs:
        return (
            f"the checkpoint's data was split with data.split_version={version}, this data config "
            f"splits with {theirs}: objects it trained on may be in the evaluated split "
            f"(data.split_version={version} evaluates on the checkpoint's split)"
        )
    default = {"seed": 0, "split_fractions": {"train": 0.7, "val": 0.1, "test": 0.2}}
    differ = [k for k in default if trained.get(k, default[k]) != evaluated.get(k, default[k])]
    if version == 1:
        same_source = {k: v for k, v in (trained.get("source") or {}).items() if k != "workers"} == {
            k: v for k, v in (evaluated.get("source") or {}).items() if k != "workers"
        }
        differ += [] if same_source else ["source"]
    if not differ:
        return None
    why = (
        "a split version 1 split depends on the whole object set"
        if version == 1 and "source" in differ
        else "they decide which objects are in which split"
    )
    return (
        f"data.{', data.'.join(differ)} differ from the checkpoint's ({why}): objects it trained on may "
        "be in the evaluated split"
    )

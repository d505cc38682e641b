"""Object-level splits and sample selection.

A *sample* is an (object, view) pair. Splits are always by object, so no object's views are in two
splits; split sizes are counted in samples (the seed report: 20,000 / 4,000 / 1,000).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from r2n2.data.sources.base import SPLITS, ObjectRecord


def assign_splits(records: list[ObjectRecord], fractions: dict[str, float], seed: int) -> dict[str, list[ObjectRecord]]:
    """Group objects by split. Objects whose source fixes the split keep it; the others are split
    by ``fractions`` (e.g. train 0.7, val 0.1, test 0.2) in a seeded, category-stratified order:
    each category is shuffled and its objects spread evenly over [0, 1), all categories are merged
    by that position, and the merged list is cut by the fractions.
    """
    out: dict[str, list[ObjectRecord]] = {s: [] for s in SPLITS}
    free: dict[str, list[ObjectRecord]] = defaultdict(list)
    for r in records:
        (out[r.split] if r.split else free[r.category]).append(r)
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

"""A CSV manifest: one row per sample, for the seed report's .mat data and for users' own data.

Columns (header required; extra columns are ignored)::

    image      one image path, or several separated by ';' (views of the same object)
    voxels     a voxel file: .binvox, .mat, .npy or .npz
    category   a category name
    object_id  (optional) rows with the same id are views of one object; default: the voxel path
    split      (optional) train / val / test; without it the split is drawn per object from a seed

Relative paths are taken relative to ``root`` (default: the CSV's folder).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from r2n2.data.errors import DataError
from r2n2.data.sources.base import SPLITS, ErrorPolicy, ObjectRecord

REQUIRED = ("image", "voxels", "category")


class ManifestSource:
    """Objects listed in a CSV manifest (see the module docstring for the columns).

    voxel_key: the array to read from .mat/.npz voxel files (e.g. ``Volume``, ``instance``,
        ``input``); None takes the file's single 3D array.
    """

    def __init__(self, path: str, root: str | None = None, voxel_key: str | None = None, image_sep: str = ";"):
        self.path = Path(path).expanduser()
        self.root = self.path.parent if root is None else Path(root).expanduser()
        self.voxel_key = voxel_key
        self.image_sep = image_sep

    def prepare(self, sizes: dict[str, int | None]) -> None:
        if not self.path.is_file():
            raise DataError(self.path, "manifest CSV not found")

    def describe(self) -> dict:
        return {"kind": "manifest", "path": str(self.path.resolve()), "root": str(self.root.resolve()),
                "voxel_key": self.voxel_key}

    def _abs(self, p: str) -> str:
        p = os.path.expanduser(p.strip())
        return p if os.path.isabs(p) else os.fspath(self.root / p)

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None] | None = None) -> list[ObjectRecord]:
        try:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(self.path, f"manifest lacks column(s) {missing}; it has {reader.fieldnames}")
                rows = list(reader)
        except FileNotFoundError:
            raise DataError(self.path, "manifest CSV not found") from None
        objects: dict[str, dict] = {}
        for line, row in enumerate(rows, start=2):
            images = [self._abs(p) for p in (row["image"] or "").split(self.image_sep) if p.strip()]
            voxels = (row["voxels"] or "").strip()
            split = (row.get("split") or "").strip() or None
            if not images or not voxels:
                errors.handle(DataError(self.path, f"line {line}: empty image or voxels field"))
                continue
            if split is not None and split not in SPLITS:
                errors.handle(DataError(self.path, f"line {line}: split {split!r} is not one of {SPLITS}"))
                continue
            voxels = self._abs(voxels)
            key = (row.get("object_id") or "").strip() or voxels
            obj = objects.setdefault(key, {"category": row["category"].strip(), "voxels": voxels,
                                           "split": split, "images": []})
            if (obj["voxels"], obj["split"]) != (voxels, split):
                errors.handle(DataError(self.path, f"line {line}: object {key!r} given different voxels or split"))
                continue
            obj["images"] += [p for p in images if p not in obj["images"]]
        return [ObjectRecord(k, o["category"], tuple(o["images"]), o["voxels"], o["split"]) for k, o in objects.items()]

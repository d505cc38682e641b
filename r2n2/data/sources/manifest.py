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

    def _rows(self) -> list[tuple[int, dict]]:
        """(line number, row) for every data row; ``DataError`` naming the CSV and the line if it
        cannot be parsed (bad UTF-8, an unterminated quote, a field over csv's size limit)."""
        reader = None
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
                reader = csv.DictReader(f)
                missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(self.path, f"manifest lacks column(s) {missing}; it has {reader.fieldnames}")
                return [(reader.line_num, row) for row in reader]
        except FileNotFoundError:
            raise DataError(self.path, "manifest CSV not found") from None
        except UnicodeDecodeError as e:
            raise DataError(self.path, f"not UTF-8 text (byte {e.start}: {e.reason})") from None
        except csv.Error as e:
            raise DataError(self.path, f"malformed CSV near line {reader.line_num if reader else 1} ({e})") from None
        except OSError as e:
            raise DataError(self.path, f"manifest CSV unreadable ({e.strerror or e})") from None

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None] | None = None) -> list[ObjectRecord]:
        objects: dict[str, dict] = {}
        for line, row in self._rows():
            field = {k: (row.get(k) or "").strip() if isinstance(row.get(k), str) else "" for k in _COLUMNS}
            images = [self._abs(p) for p in field["image"].split(self.image_sep) if p.strip()]
            voxels, category, split = field["voxels"], field["category"], field["split"] or None
            if not images or not voxels or not category:
                errors.handle(DataError(self.path, f"line {line}: empty image, voxels or category field"))
                continue
            if "\0" in field["image"] + voxels:
                errors.handle(DataError(self.path, f"line {line}: a path contains a NUL byte"))
                continue
            if split is not None and split not in SPLITS:
                errors.handle(DataError(self.path, f"line {line}: split {split!r} is not one of {SPLITS}"))
                continue
            voxels = self._abs(voxels)
            key = field["object_id"] or voxels
            obj = objects.setdefault(key, {"category": category, "voxels": voxels, "split": split, "images": []})
            if (obj["voxels"], obj["split"], obj["category"]) != (voxels, split, category):
                errors.handle(DataError(self.path, f"line {line}: object {key!r} given different voxels, split "
                                                   "or category than on an earlier line"))
                continue
            obj["images"] += [p for p in images if p not in obj["images"]]
        return [ObjectRecord(k, o["category"], tuple(o["images"]), o["voxels"], o["split"]) for k, o in objects.items()]


_COLUMNS = REQUIRED + ("object_id", "split")

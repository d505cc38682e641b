"""A CSV manifest: one row per sample, for the seed report's .mat data and for users' own data.

Columns (header required; extra columns are ignored)::

    image      one image path, or several separated by ';' (views of the same object)
    voxels     a voxel file: .binvox, .mat, .npy or .npz
    category   a category name
    object_id  (optional) rows with the same id are views of one object; default: the voxel file
    split      (optional) train / val / test; without it the split is drawn per object from a seed

Voxel files may be any cubic size: each is max-pooled to ``data.resolution`` (or kept at it); above
32, one coarser than that is refused, naming the file (``r2n2.data.formats.load_voxels``).

Relative paths are taken relative to ``root`` (default: the CSV's folder). Without an ``object_id``
the voxel file names the object, resolved (symlinks, ``..``): ``x/../x/model.binvox`` and
``x/model.binvox`` are one object, whose id is the resolved path relative to the resolved ``root``
(so the id, and with it the split, travel with a data folder that is moved) or, for a file outside
``root``, the absolute resolved path; views are told apart by their resolved files too. Runs
saved before ``data.split_version`` existed (split version 1) keep their earlier ids: the voxel path
as written, joined to ``root``.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

from r2n2.data.errors import DataError
from r2n2.data.formats import RESOLUTION
from r2n2.data.sources.base import SPLITS, ErrorPolicy, ObjectRecord, files_fingerprint

REQUIRED = ("image", "voxels", "category")


class ManifestSource:
    """Objects listed in a CSV manifest (see the module docstring for the columns).

    voxel_key: the array to read from .mat/.npz voxel files (e.g. ``Volume``, ``instance``,
        ``input``); None takes the file's single 3D array.
    split_version: how objects without an ``object_id`` are identified (module docstring): 2 by
        their resolved voxel file, 1 by the path text (runs saved before split version 2).
        ``R2N2DataModule`` sets it to its ``data.split_version``.
    """

    split_version = 2
    resolution = RESOLUTION  # R2N2DataModule sets data.resolution

    def __init__(self, path: str, root: str | None = None, voxel_key: str | None = None, image_sep: str = ";"):
        self.path = Path(path).expanduser()
        self.root = self.path.parent if root is None else Path(root).expanduser()
        self.voxel_key = voxel_key
        self.image_sep = image_sep

    def prepare(self, sizes: dict[str, int | None]) -> None:
        if not self.path.is_file():
            raise DataError(self.path, "manifest CSV not found")

    def describe(self) -> dict:
        return {
            "kind": "manifest",
            "path": str(self.path.resolve()),
            "root": str(self.root.resolve()),
            "voxel_key": self.voxel_key,
        }

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

    def fingerprint(self, sizes: dict[str, int | None] | None = None) -> str:
        """Every listed file's size and time (``files_fingerprint``); faults surface when listing."""
        return files_fingerprint(self.records(ErrorPolicy("skip"), sizes))

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None] | None = None) -> list[ObjectRecord]:
        objects: dict[str, dict] = {}
        resolved = self.split_version >= 2
        same = functools.lru_cache(maxsize=None)(os.path.realpath) if resolved else str  # what tells paths apart
        root = os.path.realpath(self.root)
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
            key = field["object_id"] or (_voxel_id(same(voxels), root) if resolved else voxels)
            obj = objects.setdefault(
                key, {"category": category, "voxels": voxels, "split": split, "images": [], "seen": set()}
            )
            if (same(obj["voxels"]), obj["split"], obj["category"]) != (same(voxels), split, category):
                errors.handle(
                    DataError(
                        self.path,
                        f"line {line}: object {key!r} given different voxels, split "
                        "or category than on an earlier line",
                    )
                )
                continue
            for p, seen in ((p, same(p)) for p in images):
                if seen not in obj["seen"]:
                    obj["seen"].add(seen)
                    obj["images"].append(p)
        return [ObjectRecord(k, o["category"], tuple(o["images"]), o["voxels"], o["split"]) for k, o in objects.items()]


def _voxel_id(real: str, root: str) -> str:
    """The id of an object named by its (resolved) voxel file under split version 2: relative to the
    resolved root, or absolute outside it (module docstring)."""
    return os.path.relpath(real, root) if os.path.commonpath([real, root]) == root else real


_COLUMNS = REQUIRED + ("object_id", "split")

"""Pix3D (Sun et al. 2018): real photos of IKEA furniture aligned with 3D models, as downloaded::

    <root>/pix3d.json                       one entry per photo (below)
    <root>/img/<category>/<name>.jpg|png    the photos
    <root>/mask/<category>/<name>.png       the object's mask (0 / 255), same size as the photo
    <root>/model/<category>/<model>/voxel.mat   the model's occupancy grid, key ``voxel``, 128^3

An entry holds ``img``, ``mask``, ``category``, ``img_size`` [w, h], ``bbox`` [x0, y0, x1, y1] in
pixels, ``voxel``, ``model``, ``truncated``, ``occluded`` (and more, unused here).

Each photo is cropped to its bounding box as Pix2Vox's Pix3D loader does (``utils/data_transforms.py``,
``CenterCrop`` with a bounding box): a square of side max(box width, box height) centred on the box,
corners truncated to int and both ends included, the part outside the photo padded with the photo's
edge pixels; then resized to ``crop_size`` (Pix2Vox: 224). The mask becomes the alpha channel
(padding: transparent), so the shared pipeline composites the object on its grey background; with
``mask: false`` the photo keeps its background (alpha 255), as Pix2Vox feeds it.

Voxels are read from ``voxel.mat`` by the shared .mat reader, max-pooled from 128^3 to
``data.resolution`` (32 by default, as the report's .mat data; 128 keeps them as they are) and turned
from Pix3D's axis order into this project's (:func:`to_project_axes`), once: the R^3 grids are kept as
.npy beside the crops. One object is one 3D model (one voxel
file); its views are the photos of it.

Axis orders (array index 0, 1, 2 as ``scipy.io.loadmat`` and the shared .mat reader return them):

- Pix3D's ``voxel.mat``: +x leftward, +y outward, +z upward, "in canonical view" (xingyuansun/pix3d
  README.md at e54d4b23fc5745cae6b7006f1bb25dc6ea34a08b, field ``voxel``; its ``model`` .obj files are
  +x leftward, +y upward, +z inward). The canonical view is read as the view of the object's front, so
  +y ("outward", towards that viewer) is the direction the object faces. Mesh R-CNN reads the same
  files the same way: facebookresearch/meshrcnn meshrcnn/utils/shape.py ``read_voxel`` (at
  10af039968c14646f71e5a18f5c51b47644881c4) turns voxel.mat into the .obj frame with
  ``np.rot90(voxel, k=3, axes=(1, 2))``, i.e. model[i, j, k] = voxel[i, N-1-k, j]: voxel +z is model +y
  (up) and voxel +y is model -z (outward), as the README says.
- Pix2Vox's Pix3D loader gives no order for voxel.mat, as it never reads it: hzxie/Pix2Vox (at
  0596d5e98bcbbbd6dcc4e4b8b7303b9337b72103) config.py ``__C.DATASETS.PIX3D.VOXEL_PATH =
  '.../Pix3D/model/%s/%s/%s.binvox'`` and utils/data_loaders.py ``Pix3dDataLoader`` (``voxel.mat`` renamed
  to ``model.binvox``) load 32^3 binvox files that users make from model.obj themselves (Pix2Vox issues
  #17 and #25), with no transpose. Followed here: Pix3D's README, as Mesh R-CNN.
- This project (ShapeNetVox32 after the binvox (x, z, y) -> (x, y, z) transpose, REFERENCE.md "binvox"):
  +y up, +x the object's front, +z the left of a viewer facing that front (right-handed). Measured on
  ../shared/data/r2n2-sample: the chair's backrest is at low x and the pickup's bed behind its cabin at
  low x; the renderings agree (r2n2/data/camera.py puts azimuth 0 on +x: view 11, azimuth 347, shows the
  chair's front; a camera on +x looking at the origin with y up has its right on -z).

So project (x, y, z) = Pix3D (y, z, x): a cyclic permutation of the axes, a proper rotation
(det +1, no mirror), with no index reversed: ``grid.transpose(1, 2, 0)``.

Split: Pix2Vox's ``Pix3D.json`` (``[{"taxonomy_name": "chair", "train": ["0001", ...], "test": [...]}]``,
sample names are photo names without extension) fixes each photo's split, and photos it does not
list are left out; it splits photos, so one model can be in train and test: its photos then form
one object per split, and ``records`` logs a warning saying how many models that is. Without it, the
split is drawn per model from ``data.seed``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from r2n2.data.categories import category_filter
from r2n2.data.errors import DataError
from r2n2.data.formats import RESOLUTION, load_voxels
from r2n2.data.sources.base import SPLITS, ErrorPolicy, ObjectRecord, files_fingerprint
from r2n2.utils.atomic import atomic_write

# Pix2Vox's image size for Pix3D (config.py: CONST.IMG_W = IMG_H = 224); the cache then resizes to 127
CROP_SIZE = 224
# bump when the crop computation changes: old crops are then remade
CROP_VERSION = 1
FIELDS = ("img", "mask", "category", "bbox", "voxel")
MAT_KEY = "voxel"  # Pix3D's voxel.mat holds one array under this key
# np.transpose axes from Pix3D's voxel.mat order (+x left, +y outward = the front, +z up; Pix3D README.md
# at e54d4b2) to the project's (+x front, +y up, +z left): out[i, j, k] = voxel[k, i, j] (module docstring)
PIX3D_TO_PROJECT = (1, 2, 0)
# bump when the grids made from voxel.mat change: they are kept in a folder named by it, so older
# grids are not reused (1: Pix3D's stored axis order, before PIX3D_TO_PROJECT; 2: the project's)
VOXEL_VERSION = 2

log = logging.getLogger(__name__)


def to_project_axes(grid: np.ndarray) -> np.ndarray:
    """A grid in Pix3D's voxel.mat axis order -> the same grid in the project's (y up, x the front)."""
    return np.ascontiguousarray(np.transpose(grid, PIX3D_TO_PROJECT))


def square_box(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """Pix2Vox's square crop around ``bbox`` = [x0, y0, x1, y1] (pixels): (left, top, right, bottom),
    both ends included, possibly outside the ``width`` x ``height`` image."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)


def crop_rgba(rgb: np.ndarray, mask: np.ndarray | None, bbox, size: int = CROP_SIZE) -> np.ndarray:
    """``rgb: (H, W, 3) uint8``, ``mask: (H, W) uint8`` or None -> ``(size, size, 4) uint8`` RGBA.

    The square crop of :func:`square_box`; outside the photo, colours repeat its edge pixels
    (Pix2Vox: ``np.pad(mode="edge")``) and alpha is 0 (255 everywhere without a mask). Resized with
    antialiasing on premultiplied alpha, so background colours do not bleed into the object's edge.
    """
    h, w = rgb.shape[:2]
    left, top, right, bottom = square_box(bbox, w, h)
    pad = [(max(0, -top), max(0, bottom - (h - 1))), (max(0, -left), max(0, right - (w - 1)))]
    rows, cols = slice(max(top, 0), min(bottom, h - 1) + 1), slice(max(left, 0), min(right, w - 1) + 1)
    colour = np.pad(rgb[rows, cols], pad + [(0, 0)], mode="edge")
    if mask is None:  # the photo as Pix2Vox feeds it, edge padding included
        alpha = np.full(colour.shape[:2], 255, np.uint8)
    else:  # outside the photo is not the object
        alpha = np.pad(np.where(mask[rows, cols] > 127, 255, 0).astype(np.uint8), pad, constant_values=0)
    out = Image.fromarray(np.dstack([colour, alpha]), "RGBA")
    return np.asarray(out.convert("RGBa").resize((size, size), Image.BILINEAR, reducing_gap=None).convert("RGBA"))


class Pix3DSource:
    """Pix3D under ``root`` (see the module docstring).

    taxonomy: Pix2Vox's Pix3D.json (relative paths under ``root``), or None: split per model from a seed.
    categories: category names to keep (None = all).
    drop_truncated / drop_occluded: leave out photos flagged ``truncated`` / ``occluded`` in pix3d.json.
    mask: composite on the mask (True) or keep the photo's background (False, as Pix2Vox).
    crop_size: side of the stored crops (pixels). crop_dir: where the crops are written (made once,
        remade when a photo, mask or pix3d.json is newer); default ``<root>/crops``.
    """

    voxel_key = None  # records point at the R^3 .npy made from voxel.mat (see _voxels)
    resolution = RESOLUTION  # R2N2DataModule sets data.resolution

    def __init__(
        self,
        root: str,
        annotations: str = "pix3d.json",
        taxonomy: str | None = None,
        categories: list[str] | None = None,
        drop_truncated: bool = False,
        drop_occluded: bool = False,
        mask: bool = True,
        crop_size: int = CROP_SIZE,
        crop_dir: str | None = None,
    ):
        self.root = Path(root).expanduser()
        self.annotations = self.root / Path(annotations).expanduser()
        self.taxonomy = None if taxonomy is None else self.root / Path(taxonomy).expanduser()
        self.categories = category_filter(categories)
        self.drop_truncated, self.drop_occluded, self.mask = bool(drop_truncated), bool(drop_occluded), bool(mask)
        self.crop_size = int(crop_size)
        self.crop_dir = self.root / "crops" if crop_dir is None else Path(crop_dir).expanduser()

    def prepare(self, sizes: dict[str, int | None]) -> None:
        if not self.annotations.is_file():
            raise DataError(self.annotations, "Pix3D annotations not found: is data.source.root the Pix3D folder?")

    def describe(self) -> dict:
        return {
            "kind": "pix3d",
            "root": str(self.root.resolve()),
            "annotations": str(self.annotations.resolve()),
            "taxonomy": None if self.taxonomy is None else str(self.taxonomy.resolve()),
            "categories": self.categories,
            "drop_truncated": self.drop_truncated,
            "drop_occluded": self.drop_occluded,
            "mask": self.mask,
            "crop_size": self.crop_size,
        }

    # -- reading ------------------------------------------------------------------------------
    def _entries(self) -> list[dict]:
        try:
            entries = json.loads(self.annotations.read_text())
        except FileNotFoundError:
            raise DataError(self.annotations, "Pix3D annotations not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(self.annotations, f"not valid JSON ({e})") from None
        if not isinstance(entries, list):
            raise DataError(self.annotations, f"expected a list of photo entries, got a {type(entries).__name__}")
        return entries

    def _splits(self) -> dict[str, str] | None:
        """{"<category>/<photo name>": split} from a Pix2Vox Pix3D.json, or None without one."""
        if self.taxonomy is None:
            return None
        try:
            tax = json.loads(self.taxonomy.read_text())
            out = {}
            for entry in tax:
                for split in SPLITS:
                    for name in entry.get(split, []):
                        key = f"{entry['taxonomy_name']}/{name}"
                        if out.setdefault(key, split) != split:
                            raise DataError(self.taxonomy, f"photo {key} is listed in both {out[key]} and {split}")
            return out
        except FileNotFoundError:
            raise DataError(self.taxonomy, "taxonomy file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(self.taxonomy, f"taxonomy is not valid JSON ({e})") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(self.taxonomy, f"not in Pix2Vox Pix3D.json format ({e!r})") from None

    def _crop_folder(self) -> Path:
        key = hashlib.sha1(f"{self.root.resolve()}|{self.crop_size}|{self.mask}|{CROP_VERSION}".encode()).hexdigest()
        return self.crop_dir / f"s{self.crop_size}-{'masked' if self.mask else 'photo'}-{key[:10]}"

    def _crop(self, entry: dict, out: Path) -> None:
        """Write the RGBA crop of one photo to ``out`` unless an up-to-date one is there."""
        img, mask = self.root / entry["img"], self.root / entry["mask"]
        sources = [img, self.annotations] + ([mask] if self.mask else [])
        try:
            newest = max(p.stat().st_mtime_ns for p in sources)
        except FileNotFoundError:
            missing = next(p for p in sources if not p.exists())
            raise DataError(missing, "image file not found" if missing != mask else "mask file not found") from None
        if out.is_file() and out.stat().st_mtime_ns >= newest:
            return
        rgb = _read(img, "RGB")
        m = _read(mask, "L") if self.mask else None
        if m is not None and m.shape != rgb.shape[:2]:
            raise DataError(
                mask, f"mask is {m.shape[1]}x{m.shape[0]} but its photo {img} is {rgb.shape[1]}x{rgb.shape[0]}"
            )
        bbox = entry["bbox"]
        if len(bbox) != 4 or not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
            raise DataError(self.annotations, f"entry {entry['img']}: bad bbox {bbox} (expected [x0, y0, x1, y1])")
        rgba = crop_rgba(rgb, m, bbox, self.crop_size)
        with atomic_write(out) as f:
            Image.fromarray(rgba, "RGBA").save(f, "PNG")

    def _voxels(self, rel: str, folder: Path) -> str:
        """``voxel.mat`` (key ``voxel``, 128^3) read, max-pooled to R^3 (``resolution``) and brought to the
        project's axis order (:func:`to_project_axes`) once, here in the main process, and kept as .npy
        beside the crops (under ``voxels-v<VOXEL_VERSION>``, ``-r<R>`` added above 32): the cache's forked
        pack workers then only read R^3 grids."""
        mat = self.root / rel
        name = f"voxels-v{VOXEL_VERSION}" + ("" if self.resolution == RESOLUTION else f"-r{self.resolution}")
        out = folder / name / Path(rel).with_suffix(".npy")
        try:
            fresh = out.is_file() and out.stat().st_mtime_ns >= mat.stat().st_mtime_ns
        except FileNotFoundError:
            raise DataError(mat, "voxel file not found") from None
        if not fresh:
            grid = to_project_axes(load_voxels(mat, MAT_KEY, self.resolution))
            buf = io.BytesIO()
            np.save(buf, grid)
            with atomic_write(out) as f:
                f.write(buf.getvalue())
        return os.fspath(out)

    def fingerprint(self, sizes: dict[str, int | None] | None = None) -> str:
        """Every listed file's size and time (``files_fingerprint``); faults surface when listing."""
        return files_fingerprint(self.records(ErrorPolicy("skip"), sizes))

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None] | None = None) -> list[ObjectRecord]:
        """One record per (model, split); writes missing crops and R^3 grids (atomically, so ranks may race)."""
        splits, folder = self._splits(), self._crop_folder()
        objects: dict[tuple[str, str | None], dict] = {}
        voxels: dict[str, str | None] = {}  # voxel.mat (relative) -> its R^3 .npy, None if unreadable
        for n, entry in enumerate(self._entries()):
            if not isinstance(entry, dict) or any(k not in entry for k in FIELDS):
                errors.handle(DataError(self.annotations, f"entry {n} lacks one of {FIELDS}: {str(entry):.120}"))
                continue
            category, stem = str(entry["category"]), Path(entry["img"]).stem
            if self.categories is not None and category not in self.categories:
                continue
            if (self.drop_truncated and entry.get("truncated")) or (self.drop_occluded and entry.get("occluded")):
                continue
            split = None if splits is None else splits.get(f"{category}/{stem}")
            if splits is not None and split is None:
                continue  # Pix2Vox uses only the photos its split lists
            crop = folder / category / f"{stem}.png"
            try:
                self._crop(entry, crop)
            except DataError as e:
                errors.handle(e)
                continue
            rel = str(entry["voxel"])
            if rel not in voxels:
                try:
                    voxels[rel] = self._voxels(rel, folder)
                except DataError as e:
                    voxels[rel] = None
                    errors.handle(e)
            if voxels[rel] is None:
                continue
            obj = objects.setdefault((rel, split), {"category": category, "images": [], "voxels": voxels[rel]})
            obj["images"].append(os.fspath(crop))
        if splits is not None:
            self._log_shared_models(objects)
        out = []
        for (rel, split), obj in sorted(objects.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            object_id = os.path.splitext(rel.removeprefix("model/"))[0] + ("" if split is None else f"@{split}")
            out.append(ObjectRecord(object_id, obj["category"], tuple(obj["images"]), obj["voxels"], split))
        return out

    def _log_shared_models(self, objects: dict) -> None:
        """Say at run time that Pix2Vox's photo-level split puts models in more than one split."""
        splits_of: dict[str, set] = {}
        for rel, split in objects:
            splits_of.setdefault(rel, set()).add(split)
        shared = sorted(rel for rel, s in splits_of.items() if len(s) > 1)
        if shared:
            log.warning(
                "Pix3D: %d of %d 3D models have photos in more than one split, as %s splits photos, "
                "not models (Pix2Vox's photo-level split): each such model is one object per split, so "
                "a model seen in training is scored again, from other photos (e.g. %s)",
                len(shared),
                len(splits_of),
                self.taxonomy.name,
                shared[0],
            )


def _read(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"not a readable image ({e})") from None

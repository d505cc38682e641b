"""A packed cache of one split: every image compressed on its own, so the cache stays the size of the
PNGs it was packed from, and a start opens it without reading it.

Layout of ``<cache_dir>/<split>-<key>/``::

    images.z      N zlib streams, one per image: (S, S, 4) uint8 RGBA, already resized to S = 127
    images.npy    (N + 1, 2) int64: row i = (start offset of image i in images.z, its CRC-32); the
                  last row = (size of images.z, 0)
    voxels.u8     (M, R^3 / 8) uint8 bit-packed (x, y, z) occupancy, R = 32, one row per object
    samples.npy   (K, 2) int64: (object, stored view of the object) per sample
    index.json    objects (id, category, first image, count, views in the source), sizes of the
                  files and CRC-32s of the small ones; written last

Why compressed per image: a 127 x 127 RGBA rendering is 64.5 KB raw but ~4.5 KB as a zlib stream
(level 1: 0.18 ms to pack, 0.12 ms to read back; the 3D-R2N2 PNGs it came from are ~5 KB), and a
batch reads its images one by one anyway. The values read back are exactly the packed ones.

The key (``cache_key``) hashes what fixes the split's content: the source's identity and
fingerprint (``Source.fingerprint``: for ShapeNet the folders' modification times, not every file's),
the split's parameters and the data config; a changed source or config gets a new cache. A cache is
built in a temporary folder and renamed into place, so a killed run leaves no half cache. Opening
checks the index, every file's size and the small files' CRC-32s, and never reads the images: each
image's CRC-32 is checked when it is read, and a corrupt one invalidates the cache (it is rebuilt at
the next start) with an error naming it; ``verify=True`` checks every image at opening too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from r2n2.data.errors import DataError
from r2n2.data.formats import load_voxels, read_rgba
from r2n2.data.sources.base import ErrorPolicy, ObjectRecord
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 1: images.u8, every image raw (13x the PNGs), the whole cache CRC-checked at every start
# zlib level 1: within 3% of level 6's size on renderings at a third of its packing time
ZLIB_LEVEL = 1
# files checked whole at opening (small: bytes per object or per image, not per pixel)
_CHECKED = ("images.npy", "voxels.u8", "samples.npy")
_CRC_CHUNK = 1 << 24


class CacheInvalid(Exception):
    """A cache folder exists but must not be used (partial, corrupt or from another version)."""


class CorruptImage(DataError):
    """An image of a cache fails its check when read: the cache has been invalidated.

    A DataLoader worker's exception reaches the main process as ``type(e)(traceback text)``; from that
    one argument the error is rebuilt as raised, so ``train.py`` still prints its one line."""

    def __init__(self, path, fault: str | None = None):
        if fault is None:  # re-raised from a worker: the last line is "<module>.CorruptImage: <path>: <fault>"
            path, _, fault = str(path).rstrip().splitlines()[-1].split(": ", 1)[-1].partition(": ")
        super().__init__(path, fault)


@dataclass
class Plan:
    """What to pack: ``objects``, per object the ``views`` (indices into its images) to store, and
    the ``samples`` as (object index, view index) rows: (K, 2) int64."""

    objects: list[ObjectRecord]
    views: list[list[int]]
    samples: np.ndarray

    @classmethod
    def make(cls, objects: list[ObjectRecord], samples, all_views: bool) -> Plan:
        """Store only the sampled views (single-view), or every view of a sampled object (multi-view).

        samples: (K, 2) (object index into ``objects``, view index) pairs, sorted by object."""
        samples = np.asarray(samples, dtype=np.int64).reshape(-1, 2)
        used, inverse = np.unique(samples[:, 0], return_inverse=True)
        inverse = inverse.reshape(-1)
        if all_views:
            views = [list(range(len(objects[o].images))) for o in used]
        else:
            sampled: list[set[int]] = [set() for _ in used]
            for o, v in zip(inverse.tolist(), samples[:, 1].tolist()):
                sampled[o].add(v)
            views = [sorted(v) for v in sampled]
        return cls([objects[o] for o in used], views, np.stack([inverse, samples[:, 1]], 1))


def cache_key(identity: dict, config: dict) -> str:
    """SHA-256 (20 hex digits) of what fixes a split's content: ``identity`` (the source, its
    fingerprint and the split's parameters) and the data ``config``."""
    text = json.dumps({"v": CACHE_VERSION, "identity": identity, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def compress(image: np.ndarray) -> bytes:
    """One image as stored: a zlib stream of its raw bytes."""
    return zlib.compress(np.ascontiguousarray(image, dtype=np.uint8).tobytes(), ZLIB_LEVEL)


def _load_object(job: tuple) -> tuple:
    """Worker: read one object's voxels and views. Returns (bits or None, compressed images, kept views,
    faults)."""
    rec, views, size, resolution, voxel_key = job
    faults = []
    try:
        bits = np.packbits(load_voxels(rec.voxels, voxel_key, resolution))
    except DataError as e:
        return None, [], [], [(e.path, e.fault)]
    blobs, kept = [], []
    for v in views:
        try:
            blobs.append(compress(read_rgba(rec.images[v], size)))
            kept.append(v)
        except DataError as e:
            faults.append((e.path, e.fault))
    return bits, blobs, kept, faults


class _Writer:
    """Streams a split into ``folder``: images appended as they come, voxels likewise, and only
    (offset, CRC) per image and one entry per object held in memory."""

    def __init__(self, folder: Path, image_size: int, resolution: int):
        self.folder, self.size, self.resolution = folder, image_size, resolution
        self._images = open(folder / "images.z", "wb")
        self._voxels = open(folder / "voxels.u8", "wb")
        self.offsets, self.crcs = array("q", [0]), array("q")
        self.objects: list[dict] = []

    def add(self, object_id: str, category: str, views: int, bits: np.ndarray, blobs: list[bytes]) -> None:
        """One object: its bit-packed grid, its compressed images and its number of views in the source."""
        try:  # a full disk is an OSError naming the cache (a bare write raises it without a name)
            for blob in blobs:
                self._images.write(blob)
                self.offsets.append(self.offsets[-1] + len(blob))
                self.crcs.append(zlib.crc32(blob))
            self._voxels.write(np.ascontiguousarray(bits, dtype=np.uint8).tobytes())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.folder)) from None
        self.objects.append(
            {
                "id": object_id,
                "category": category,
                "first": len(self.crcs) - len(blobs),
                "count": len(blobs),
                "views": int(views),
            }
        )

    def finish(self, samples: np.ndarray) -> dict:
        """Write the tables and ``index.json`` (last); returns the index."""
        for f in (self._images, self._voxels):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        table = np.zeros((len(self.offsets), 2), np.int64)
        table[:, 0] = np.frombuffer(self.offsets, np.int64)
        table[:-1, 1] = np.frombuffer(self.crcs, np.int64)
        for name, arr in (("images.npy", table), ("samples.npy", np.asarray(samples, np.int64).reshape(-1, 2))):
            with atomic_write(self.folder / name) as f:
                np.save(f, arr)
        index = {
            "version": CACHE_VERSION,
            "image_size": self.size,
            "resolution": self.resolution,
            "num_images": len(self.crcs),
            "num_samples": len(samples),
            "objects": self.objects,
            "bytes": {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.is_file()},
            "crc": {name: _crc(self.folder / name) for name in _CHECKED},
        }
        with atomic_write(self.folder / "index.json", "w") as f:
            json.dump(index, f)
        return index

    def abort(self) -> None:
        self._images.close()
        self._voxels.close()


def write_split(folder: Path, images: np.ndarray, voxels: np.ndarray, objects: list[dict], samples) -> Path:
    """Write a packed split from arrays (tests and tools; ``pack`` writes one from source files).

    images: (N, S, S, 4) uint8 RGBA; voxels: (M, R, R, R) {0, 1} grids, one per object; objects:
    ``[{"id", "category", "first", "count"}]``, object m's images being ``images[first:first + count]``
    in order; samples: (K, 2) (object, stored view) pairs. Returns ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True)
    images = np.asarray(images, dtype=np.uint8)
    writer = _Writer(folder, images.shape[1], voxels.shape[1])
    for o, grid in zip(objects, voxels):
        blobs = [compress(img) for img in images[o["first"] : o["first"] + o["count"]]]
        writer.add(o["id"], o["category"], o.get("views", o["count"]), np.packbits(np.asarray(grid, bool)), blobs)
    writer.finish(np.asarray(samples, np.int64))
    return folder


def pack(
    folder: Path,
    plan: Plan,
    image_size: int,
    resolution: int,
    voxel_key: str | None,
    errors: ErrorPolicy,
    workers: int = 0,
) -> None:
    """Read every planned file and write the packed cache to ``folder`` (atomically), streaming:
    the processes read, resize and compress, this one appends."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    writer = None
    try:
        writer = _Writer(tmp, image_size, resolution)
        # plan object -> its slot among the stored objects, and per object plan view -> stored view
        slot = np.full(len(plan.objects), -1, np.int64)
        stored: list[dict[int, int]] = []
        jobs = ((r, v, image_size, resolution, voxel_key) for r, v in zip(plan.objects, plan.views))
        pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_load_object, jobs, chunksize=4) if pool else map(_load_object, jobs)
            results = tqdm(
                results,
                total=len(plan.objects),
                desc=f"packing {folder.name}",
                unit="object",
                disable=len(plan.objects) < 50,
                leave=False,
            )
            for o, (rec, (bits, blobs, kept, faults)) in enumerate(zip(plan.objects, results)):
                for path, fault in faults:
                    errors.handle(DataError(path, fault))
                if bits is None or not kept:
                    continue
                slot[o] = len(writer.objects)
                stored.append({v: i for i, v in enumerate(kept)})
                writer.add(rec.object_id, rec.category, len(rec.images), bits, blobs)
        finally:
            if pool:
                pool.terminate()
        keep = [i for i, (o, v) in enumerate(plan.samples.tolist()) if slot[o] >= 0 and v in stored[slot[o]]]
        samples = np.array([(slot[o], stored[slot[o]][v]) for o, v in plan.samples[keep].tolist()], np.int64)
        if not len(samples):
            raise DataError(None, f"no usable samples for cache {folder.name}: every planned sample failed to load")
        errors.write(
            tmp / "skipped.json",
            f"cache {folder.name}",
            final=folder / "skipped.json",
            dropped=len(plan.samples) - len(samples),
        )
        writer.finish(samples)
        writer = None
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            if not (folder / "index.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_index(folder: Path, verify: bool = False) -> dict:
    """Check a cache folder and return its index; raise ``CacheInvalid`` saying what is wrong.

    Reads the index and the small tables (bytes per image or object), never the images; ``verify``
    also checks every image's CRC-32 (reads the whole cache)."""
    try:
        index = json.loads((folder / "index.json").read_text())
    except FileNotFoundError:
        raise CacheInvalid("no index.json (partial cache)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheInvalid(f"index.json is corrupt ({e})") from None
    if not isinstance(index, dict):
        raise CacheInvalid(f"index.json is corrupt (a {type(index).__name__}, not an object)")
    if index.get("version") != CACHE_VERSION:
        raise CacheInvalid(f"cache version {index.get('version')} != {CACHE_VERSION}")
    try:  # a hand-edited or damaged index must mean "rebuild", not a KeyError
        sizes = {name: int(index["bytes"][name]) for name in ("images.z", *_CHECKED)}
        crc = {name: index["crc"][name] for name in _CHECKED}
        n, r, objects = int(index["num_images"]), int(index["resolution"]), index["objects"]
        expected = {"voxels.u8": len(objects) * r**3 // 8}
    except (KeyError, TypeError, ValueError) as e:
        raise CacheInvalid(f"index.json is corrupt (bad or missing field {e})") from None
    for name, nbytes in sizes.items():
        path = folder / name
        size = path.stat().st_size if path.is_file() else "missing"
        if size != nbytes or expected.get(name, nbytes) != nbytes:
            raise CacheInvalid(f"{name} has {size} bytes, expected {nbytes} (truncated or partial)")
        if name in crc and _crc(path) != crc[name]:
            raise CacheInvalid(f"{name} fails its CRC-32 check (corrupt)")
    table = np.load(folder / "images.npy")
    if table.shape != (n + 1, 2) or table[-1, 0] != sizes["images.z"]:
        raise CacheInvalid(f"images.npy holds {table.shape} entries, expected {n + 1} ending at {sizes['images.z']}")
    if verify:
        images = ImageStore(folder, int(index["image_size"]), table)
        for i in range(n):
            if not images.intact(i):
                raise CacheInvalid(f"image {i} of images.z fails its CRC-32 check (corrupt)")
    return index


class ImageStore:
    """The compressed images of a cache folder, read one by one: ``read(slots) -> (n, S, S, 4) uint8``.

    Each image's CRC-32 is checked as it is read; a corrupt one removes the folder's index.json
    (the next start rebuilds the cache) and raises ``CorruptImage`` naming the folder.
    """

    def __init__(self, folder: Path, size: int, table: np.ndarray | None = None):
        self.folder, self.size = Path(folder), size
        self.table = np.load(self.folder / "images.npy") if table is None else table
        self._data: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.table) - 1

    def __getstate__(self):  # worker processes open the file again instead of copying the mapping
        return {**self.__dict__, "_data": None}

    def _bytes(self, i: int) -> np.ndarray:
        if self._data is None:
            self._data = (
                np.memmap(self.folder / "images.z", np.uint8, "r") if self.table[-1, 0] else np.zeros(0, np.uint8)
            )
        return self._data[self.table[i, 0] : self.table[i + 1, 0]]

    def intact(self, i: int) -> bool:
        return zlib.crc32(self._bytes(i)) == self.table[i, 1]

    def read(self, slots) -> np.ndarray:
        """Images ``slots (n,) int`` -> ``(n, S, S, 4) uint8``, a new array."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        out = np.empty((len(slots), self.size, self.size, 4), np.uint8)
        flat = out.reshape(len(slots), -1)
        for j, i in enumerate(slots.tolist()):
            blob = self._bytes(i)
            try:
                if zlib.crc32(blob) != self.table[i, 1]:
                    raise ValueError("CRC-32 mismatch")
                raw = zlib.decompress(blob, bufsize=flat.shape[1])
                if len(raw) != flat.shape[1]:
                    raise ValueError(f"{len(raw)} bytes, expected {flat.shape[1]}")
            except (ValueError, zlib.error) as e:
                self._invalidate()
                raise CorruptImage(
                    self.folder,
                    f"image {i} of the cache is corrupt ({e}): the cache is invalidated "
                    "and will be rebuilt at the next start",
                ) from None
            flat[j] = np.frombuffer(raw, np.uint8)
        return out

    def _invalidate(self) -> None:
        try:
            (self.folder / "index.json").unlink()
        except OSError:
            pass
        log.error("cache %s has a corrupt image: index.json removed, so the next start rebuilds it", self.folder)


def _warn_of_old_caches(cache_dir: Path) -> None:
    """Say where caches of an older version lie unused (a version-1 cache is 13x its PNGs)."""
    old = []
    for index in cache_dir.glob("*-*/index.json"):
        try:
            version = json.loads(index.read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            continue
        if version != CACHE_VERSION:
            old.append(index.parent)
    if old:
        size = sum(p.stat().st_size for folder in old for p in folder.iterdir() if p.is_file())
        log.warning(
            "%s holds %d cache folder(s) of an older version (%.2f GB) that nothing reads any more: "
            "delete them to free the space (%s)",
            cache_dir,
            len(old),
            size / 1e9,
            ", ".join(f.name for f in old[:3]) + (", ..." if len(old) > 3 else ""),
        )


def ensure_packed(
    cache_dir: Path,
    split: str,
    identity: dict,
    plan: Plan | Callable[[], Plan],
    config: dict,
    errors: ErrorPolicy,
    workers: int = 0,
    verify: bool = False,
) -> Path:
    """Return the folder of a valid cache for one split, building (or rebuilding) it if needed.

    identity: what fixes the split's content besides ``config`` (``cache_key``); plan: the ``Plan``,
    or a function that makes it (called only when the cache must be built)."""
    folder = Path(cache_dir) / f"{split}-{cache_key({**identity, 'split': split}, config)}"
    if folder.exists():
        try:
            read_index(folder, verify)
            return folder
        except CacheInvalid as e:
            log.warning("cache %s is unusable (%s): rebuilding it", folder, e)
            shutil.rmtree(folder)
    plan = plan() if callable(plan) else plan
    _warn_of_old_caches(Path(cache_dir))
    log.info("packing %d %s samples into %s", len(plan.samples), split, folder)
    pack(folder, plan, config["image_size"], config["resolution"], config.get("voxel_key"), errors, workers)
    return folder

"""A packed, memory-mapped cache of one split, so training never waits on PNG decoding.

Layout of ``<cache_dir>/<split>-<key>/``::

    images.u8    (N_images, S, S, 4) uint8  RGBA, already resized to S = 127
    voxels.u8    (N_objects, R^3 / 8) uint8 bit-packed (x, y, z) occupancy, R = 32
    index.json   objects, samples, shapes, CRC-32 of both files; written last

The key hashes the source's identity, each file used (path, size, mtime) and the data config, so a
changed source or config gets a new cache. A cache is built in a temporary folder and renamed into
place, so a killed run leaves no half cache; on opening, sizes and checksums are checked and a
corrupt cache is rebuilt, never used.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from r2n2.atomic import atomic_write
from r2n2.data.errors import DataError
from r2n2.data.formats import load_voxels, read_rgba
from r2n2.data.sources.base import ErrorPolicy, ObjectRecord

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CRC_CHUNK = 1 << 24


class CacheInvalid(Exception):
    """A cache folder exists but must not be used (partial, corrupt or from another version)."""


@dataclass
class Plan:
    """What to pack: ``objects``, per object the ``views`` (indices into its images) to store, and
    the ``samples`` as (object index, view index) pairs."""

    objects: list[ObjectRecord]
    views: list[list[int]]
    samples: list[tuple[int, int]]

    @classmethod
    def make(cls, objects: list[ObjectRecord], samples: list[tuple[int, int]], all_views: bool) -> "Plan":
        """Store only the sampled views (single-view), or every view of a sampled object (multi-view)."""
        used = sorted({o for o, _ in samples})
        remap = {o: i for i, o in enumerate(used)}
        views: list[set[int]] = [set() for _ in used]
        for o, v in samples:
            views[remap[o]].add(v)
        if all_views:
            views = [set(range(len(objects[o].images))) for o in used]
        return cls([objects[o] for o in used], [sorted(v) for v in views], [(remap[o], v) for o, v in samples])


def cache_key(plan: Plan, source: dict, config: dict) -> str:
    """SHA-256 over the source identity, the config and every used file's (path, size, mtime)."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "source": source, "config": config}, sort_keys=True).encode())
    for rec, views in zip(plan.objects, plan.views):
        for path in [rec.voxels] + [rec.images[v] for v in views]:
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{rec.object_id}\0{rec.category}\0{path}\0{stamp}\n".encode())
    h.update(json.dumps(plan.samples).encode())
    return h.hexdigest()[:20]


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _load_object(job: tuple) -> tuple:
    """Worker: read one object's voxels and views. Returns (bits or None, images, kept views, faults)."""
    rec, views, size, resolution, voxel_key = job
    faults = []
    try:
        bits = np.packbits(load_voxels(rec.voxels, voxel_key, resolution))
    except DataError as e:
        return None, None, [], [(e.path, e.fault)]
    images, kept = [], []
    for v in views:
        try:
            images.append(read_rgba(rec.images[v], size))
            kept.append(v)
        except DataError as e:
            faults.append((e.path, e.fault))
    stack = np.stack(images) if images else np.zeros((0, size, size, 4), np.uint8)
    return bits, stack, kept, faults


def pack(folder: Path, plan: Plan, image_size: int, resolution: int, voxel_key: str | None,
         errors: ErrorPolicy, workers: int = 0) -> None:
    """Read every planned file and write the packed cache to ``folder`` (atomically)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        n_img = sum(len(v) for v in plan.views)
        shape = (max(n_img, 1), image_size, image_size, 4)
        try:  # reserve the space: a full disk is an OSError naming the cache here, not a SIGBUS in memmap
            with open(tmp / "images.u8", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, int(np.prod(shape)))
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(folder)) from None
        img = np.memmap(tmp / "images.u8", np.uint8, "r+", shape=shape)
        vox_bytes = resolution**3 // 8
        objects, voxels, slots, written = [], [], {}, 0
        jobs = [(r, v, image_size, resolution, voxel_key) for r, v in zip(plan.objects, plan.views)]
        pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_load_object, jobs, chunksize=4) if pool else map(_load_object, jobs)
            results = tqdm(results, total=len(jobs), desc=f"packing {folder.name}", unit="object",
                           disable=len(jobs) < 50, leave=False)
            for o, (rec, (bits, stack, kept, faults)) in enumerate(zip(plan.objects, results)):
                for path, fault in faults:
                    errors.handle(DataError(path, fault))
                if bits is None or not kept:
                    continue
                img[written:written + len(kept)] = stack
                slots.update({(o, v): (len(objects), i) for i, v in enumerate(kept)})
                objects.append({"id": rec.object_id, "category": rec.category, "first": written, "count": len(kept)})
                voxels.append(bits)
                written += len(kept)
        finally:
            if pool:
                pool.terminate()
        img.flush()
        del img
        os.truncate(tmp / "images.u8", written * image_size * image_size * 4)
        vox = np.stack(voxels) if voxels else np.zeros((0, vox_bytes), np.uint8)
        try:  # a plain write: numpy's tofile reports a full disk without errno ("8192 requested and 4096 written")
            with open(tmp / "voxels.u8", "wb") as f:
                f.write(vox.tobytes())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(folder)) from None
        samples = [slots[s] for s in plan.samples if s in slots]
        if not samples:
            raise DataError(None, f"no usable samples for cache {folder.name}: every planned sample failed to load")
        index = {
            "version": CACHE_VERSION,
            "image_size": image_size,
            "resolution": resolution,
            "num_images": written,
            "objects": objects,
            "samples": samples,
            "crc": {name: _crc(tmp / name) for name in ("images.u8", "voxels.u8")},
        }
        errors.write(tmp / "skipped.json", f"cache {folder.name}", final=folder / "skipped.json",
                     dropped=len(plan.samples) - len(samples))
        with atomic_write(tmp / "index.json", "w") as f:
            json.dump(index, f)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            if not (folder / "index.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_split(folder: Path, images: np.ndarray, voxels: np.ndarray, objects: list[dict], samples,
                resolution: int | None = None) -> Path:
    """Write a packed split from arrays (tests and tools; ``pack`` writes one from source files).

    images: (N, S, S, 4) uint8 RGBA; voxels: (M, R, R, R) {0, 1} grids, one per object; objects:
    ``[{"id", "category", "first", "count"}]`` (object m's images are ``images[first:first + count]``);
    samples: (K, 2) (object, view) pairs. Returns ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    r = resolution or voxels.shape[1]
    bits = np.stack([np.packbits(np.asarray(g, bool).reshape(-1)) for g in voxels]) if len(voxels) else \
        np.zeros((0, r**3 // 8), np.uint8)
    (folder / "images.u8").write_bytes(images.tobytes())
    (folder / "voxels.u8").write_bytes(bits.tobytes())
    index = {"version": CACHE_VERSION, "image_size": images.shape[1], "resolution": r, "num_images": len(images),
             "objects": objects, "samples": np.asarray(samples, np.int64).reshape(-1, 2).tolist(),
             "crc": {name: _crc(folder / name) for name in ("images.u8", "voxels.u8")}}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def read_index(folder: Path, verify: bool = True) -> dict:
    """Check a cache folder and return its index; raise ``CacheInvalid`` saying what is wrong."""
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
        s, r, n, objects, _, crc = (index[k] for k in ("image_size", "resolution", "num_images", "objects",
                                                       "samples", "crc"))
        expected = {"images.u8": n * s * s * 4, "voxels.u8": len(objects) * r**3 // 8}
        crc = {name: crc[name] for name in expected}
    except (KeyError, TypeError) as e:
        raise CacheInvalid(f"index.json is corrupt (bad or missing field {e})") from None
    for name, nbytes in expected.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != nbytes:
            size = path.stat().st_size if path.is_file() else "missing"
            raise CacheInvalid(f"{name} has {size} bytes, expected {nbytes} (truncated or partial)")
        if verify and _crc(path) != crc[name]:
            raise CacheInvalid(f"{name} fails its CRC-32 check (corrupt)")
    return index


def ensure_packed(cache_dir: Path, split: str, plan: Plan, source: dict, config: dict, errors: ErrorPolicy,
                  workers: int = 0, verify: bool = True) -> Path:
    """Return the folder of a valid cache for ``plan``, building (or rebuilding) it if needed."""
    key = cache_key(plan, source, config)
    folder = Path(cache_dir) / f"{split}-{key}"
    if folder.exists():
        try:
            read_index(folder, verify)
            return folder
        except CacheInvalid as e:
            log.warning("cache %s is unusable (%s): rebuilding it", folder, e)
            shutil.rmtree(folder)
    log.info("packing %d %s samples into %s", len(plan.samples), split, folder)
    pack(folder, plan, config["image_size"], config["resolution"], config.get("voxel_key"), errors, workers)
    return folder

"""binvox voxel files (https://www.patrickmin.com/binvox/binvox.html), read and written.

Header::

    #binvox 1
    dim D H W
    translate tx ty tz
    scale s
    data

then (value, count) byte pairs. The raw run-length order is (x, z, y) with y fastest; like every
reference reader (binvox_rw ``read_as_3d_array`` with its default ``fix_coords=True``, as used by
3D-R2N2 and Pix2Vox) we return the grid transposed to (x, y, z), y up in ShapeNetVox32.

Why our own parser and not trimesh's: trimesh's ``parse_binvox`` does not check the run lengths
against ``dim`` (an overflowing or short file surfaces as a numpy reshape error naming no file) and
would add a dependency for ~40 lines of vectorised numpy.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from r2n2.data.errors import DataError
from r2n2.data.formats.limits import MAX_BINVOX_SIDE, MAX_VOXELS
from r2n2.utils.atomic import atomic_write

MAGIC = b"#binvox"


@dataclass
class Binvox:
    """A binvox grid. ``data: (D, H, W) bool`` in (x, y, z) order.

    ``translate`` is the mesh bounding-box minimum, not the grid origin (REFERENCE.md);
    ``scale`` is the side of the cube the grid spans.
    """

    data: np.ndarray
    translate: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    version: int = 1
    dims: tuple[int, int, int] = field(init=False)

    def __post_init__(self):
        self.data = np.asarray(self.data, dtype=bool)
        if self.data.ndim != 3:
            raise ValueError(f"binvox data must be 3D, got shape {self.data.shape}")
        self.dims = tuple(int(d) for d in self.data.shape)


def _parse_header(f: io.BufferedIOBase, path) -> tuple[int, tuple[int, int, int], tuple, float]:
    first = f.readline()
    if not first.startswith(MAGIC):
        raise DataError(path, f"not a binvox file: bad magic {first[:16]!r}, expected {MAGIC!r}")
    try:
        version = int(first[len(MAGIC) :].strip() or 1)
    except ValueError:
        raise DataError(path, f"bad binvox version line {first.strip()!r}") from None
    dims = translate = scale = None
    for _ in range(16):  # a header is 4 lines after the magic; allow comments, refuse garbage
        line = f.readline()
        if not line:
            raise DataError(path, "truncated binvox header: no 'data' line")
        words = line.split()
        if not words or words[0].startswith(b"#"):
            continue
        key, args = words[0], words[1:]
        try:
            if key == b"dim":
                dims = tuple(int(a) for a in args)
            elif key == b"translate":
                translate = tuple(float(a) for a in args)
            elif key == b"scale":
                scale = float(args[0])
            elif key == b"data":
                break
            else:
                raise DataError(path, f"unknown binvox header line {line.strip()!r}")
        except DataError:  # a ValueError too: keep its own message
            raise
        except (ValueError, IndexError):
            raise DataError(path, f"malformed binvox header line {line.strip()!r}") from None
    else:
        raise DataError(path, "binvox header has no 'data' line")
    if dims is None or len(dims) != 3 or min(dims) <= 0:
        raise DataError(path, f"binvox header has a bad or missing 'dim' line: {dims}")
    if max(dims) > MAX_BINVOX_SIDE or math.prod(dims) > MAX_VOXELS:
        raise DataError(
            path,
            f"binvox dim {dims} is larger than the format allows ({MAX_BINVOX_SIDE} per side, {MAX_VOXELS} voxels)",
        )
    if translate is None or len(translate) != 3:
        translate = (0.0, 0.0, 0.0)
    return version, dims, translate, 1.0 if scale is None else scale


def read_binvox(path: str | os.PathLike) -> Binvox:
    """Read a binvox file. Returns ``Binvox`` with ``data: (D, H, W) bool`` in (x, y, z) order.

    Raises ``DataError`` naming the file for a bad magic, a malformed header, an odd number of
    run bytes, runs that overflow the grid, or runs that do not fill it.
    """
    try:
        with open(path, "rb") as f:
            version, dims, translate, scale = _parse_header(f, path)
            raw = np.frombuffer(f.read(), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(path, "voxel file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a .binvox file") from None
    if raw.size % 2:
        raise DataError(path, f"truncated binvox data: {raw.size} run bytes, expected (value, count) pairs")
    values, counts = raw[0::2], raw[1::2].astype(np.int64)
    total, expected = int(counts.sum()), math.prod(dims)
    if total > expected:
        raise DataError(path, f"binvox run overflow: runs cover {total} voxels, dim {dims} holds {expected}")
    if total < expected:
        raise DataError(path, f"truncated binvox data: runs cover {total} voxels of {expected} for dim {dims}")
    xzy = np.repeat(values.astype(bool), counts).reshape(dims)
    return Binvox(np.ascontiguousarray(xzy.transpose(0, 2, 1)), translate, scale, version)


def encode_runs(flat: np.ndarray) -> bytes:
    """Run-length encode a flat bool array as binvox (value, count<=255) byte pairs."""
    flat = np.asarray(flat, dtype=np.uint8).ravel()
    if flat.size == 0:
        return b""
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    values = flat[starts]
    chunks = (lengths + 254) // 255  # a run longer than 255 becomes several pairs
    values = np.repeat(values, chunks)
    counts = np.full(values.size, 255, dtype=np.int64)
    last = np.cumsum(chunks) - 1
    counts[last] = lengths - 255 * (chunks - 1)
    return np.stack([values, counts.astype(np.uint8)], axis=1).tobytes()


def write_binvox(path: str | os.PathLike, vox: Binvox | np.ndarray, translate=None, scale=None) -> None:
    """Write ``vox`` (a ``Binvox`` or an (x, y, z) bool array) atomically as a binvox file."""
    if not isinstance(vox, Binvox):
        vox = Binvox(vox)
    translate = vox.translate if translate is None else translate
    scale = vox.scale if scale is None else scale
    xzy = vox.data.transpose(0, 2, 1)  # back to the file's (x, z, y) order
    d, h, w = xzy.shape  # 'dim' gives the run order's shape, as read_binvox reshapes it
    header = (
        f"#binvox {vox.version}\ndim {d} {h} {w}\n"
        f"translate {' '.join(repr(float(t)) for t in translate)}\nscale {float(scale)!r}\ndata\n"
    ).encode()
    body = encode_runs(xzy)
    with atomic_write(path) as f:
        f.write(header + body)

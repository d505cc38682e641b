"""MATLAB .mat voxel files: v5 (MATLAB's default up to v7) and v4; v7.3 (HDF5) is refused with a
clear error.

Known layouts (REFERENCE.md): 3D ShapeNets key ``instance`` (30^3 int8), DRC key ``Volume`` (32^3),
ShapeNet-challenge key ``input`` (256^3).

Why v5 is read here and not by ``scipy.io.loadmat``: scipy's compiled reader trusts the file, and
benchmarks/fuzz.py found malformed v5 files that crash the process (SIGSEGV: a negative dimension,
a data element of type >= 20, and heap damage from inputs that passed both checks) or make it
allocate a declared size. A voxel grid is one numeric matrix, which takes ~60 lines of numpy to
read with every size checked before anything is allocated (MAT-File Format, MathWorks, ch. 1).
v4 files, read by scipy's plain-numpy v4 reader, still go through scipy.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import scipy.io

from r2n2.data.errors import DataError
from r2n2.data.formats.limits import MAX_VOXELS

# MATLAB v7.3 files are HDF5 containers whose 128-byte text header says so
_V73_HEADER = b"MATLAB 7.3 MAT-file"
# MAT-File Format, table 1-1 (data types) and 1-3 (array classes)
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_CLASSES = {
    1: "cell",
    2: "struct",
    3: "object",
    4: "char",
    5: "sparse",
    6: "double",
    7: "single",
    8: "int8",
    9: "uint8",
    10: "int16",
    11: "uint16",
    12: "int32",
    13: "uint32",
    14: "int64",
    15: "uint64",
    16: "function",
    17: "opaque",
}
_NUMERIC = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "logical"}
_LOGICAL, _COMPLEX = 0x200, 0x800
# a variable's header (flags, dims, name) is inflated first, to size the rest before inflating it
_HEADER_BYTES = 4096


def read_mat(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read the voxel array of a .mat file: ``key`` if given, else the file's single 3D numeric array.

    Returns the array as stored (any numeric dtype, any 3D shape); ``load_voxels`` checks and resizes it.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise DataError(path, "voxel file not found") from None
    except OSError as e:
        raise DataError(path, f"unreadable .mat file ({e.strerror or e})") from None
    if blob.startswith(_V73_HEADER) or (len(blob) >= 128 and blob[124:126] in (b"\x00\x02", b"\x02\x00")):
        raise DataError(
            path,
            "MATLAB v7.3 (HDF5) .mat files are not supported: re-save it with save(..., '-v7') or convert it to .npy",
        )
    if len(blob) >= 4 and 0 in blob[:4]:  # scipy's rule: v4 files start with a small integer type code
        return _read_v4(path, key)
    order = {b"IM": "<", b"MI": ">"}.get(blob[126:128])
    if len(blob) < 128 or order is None:
        raise DataError(path, "unreadable .mat file: not MATLAB v5 (no header) nor v4")
    variables = {v.name: v for v in _v5_variables(path, blob, order)}
    var = variables[_choose(path, key, {n: (v.shape, v.cls) for n, v in variables.items()})]
    return var.read(path)


def _choose(path, key: str | None, arrays: dict[str, tuple[tuple[int, ...], str]]) -> str:
    """The variable to read: ``key``, or the single 3D numeric array; its declared shape checked."""
    arrays = {k: v for k, v in arrays.items() if not k.startswith("__")}
    if key is not None:
        if key not in arrays:
            raise DataError(path, f"no key {key!r} in .mat file; it holds {sorted(arrays)}")
        found = {key: arrays[key]}
    else:
        found = {k: v for k, v in arrays.items() if len(v[0]) == 3 and v[1] in _NUMERIC}
        if not found:
            shapes = {k: f"{cls} {shape}" for k, (shape, cls) in arrays.items()}
            raise DataError(path, f"no 3D array in .mat file (it holds {shapes})")
        if len(found) > 1:
            raise DataError(
                path, f"several 3D arrays in .mat file {sorted(found)}: choose one with data.source.voxel_key"
            )
    name, (shape, cls) = next(iter(found.items()))
    if cls not in _NUMERIC:
        raise DataError(path, f"{name!r} in .mat file is a {cls} {shape}, not a numeric array")
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_VOXELS:
        raise DataError(
            path, f"{name!r} in .mat file declares shape {shape}: corrupt, or more than {MAX_VOXELS} voxels"
        )
    return name


def _read_v4(path, key: str | None) -> np.ndarray:
    try:
        listing = scipy.io.whosmat(path)
        name = _choose(path, key, {n: (tuple(s), c) for n, s, c in listing})
        return np.asarray(scipy.io.loadmat(path, variable_names=[name])[name])
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError/TypeError/KeyError... on corrupt files
        raise DataError(path, f"unreadable .mat file ({type(e).__name__}: {e})") from None


@dataclass
class _Variable:
    """A v5 matrix: ``data`` is its content after the 8-byte miMATRIX tag (inflated if compressed)."""

    name: str
    shape: tuple[int, ...]
    cls: str
    flags: int
    data: bytes
    at: int  # offset of the real part in ``data``
    order: str

    def read(self, path) -> np.ndarray:
        mtype, start, end, _ = _element(path, self.data, self.at, self.order)
        if mtype not in _MI_DTYPES:
            raise DataError(path, f"corrupt .mat file: {self.name!r} holds data of unknown type {mtype}")
        dtype = np.dtype(_MI_DTYPES[mtype]).newbyteorder(self.order)
        count = math.prod(self.shape)
        if (end - start) != count * dtype.itemsize:
            raise DataError(
                path,
                f"corrupt .mat file: {self.name!r} holds {end - start} bytes of "
                f"{dtype.name}, its shape {self.shape} needs {count * dtype.itemsize}",
            )
        values = np.frombuffer(self.data, dtype, count, start).reshape(self.shape, order="F")
        return values.astype(bool) if self.flags & _LOGICAL else values.astype(dtype.newbyteorder("="))


def _element(path, data: bytes, at: int, order: str) -> tuple[int, int, int, int]:
    """(type, start of its data, end of its data, start of the next element) of the data element at
    ``at``; the small format packs type and size in 4 bytes and the data in the other 4."""
    if at + 8 > len(data):
        raise DataError(path, "corrupt .mat file: a data element is cut off")
    mtype, nbytes = struct.unpack_from(order + "II", data, at)
    if mtype >> 16:
        mtype, start, end, nxt = mtype & 0xFFFF, at + 4, at + 4 + (mtype >> 16), at + 8
    else:
        start, end, nxt = at + 8, at + 8 + nbytes, at + 8 + nbytes + (-nbytes % 8)
    if end > len(data):
        raise DataError(path, f"corrupt .mat file: a data element of {end - start} bytes runs past its variable")
    return mtype, start, end, nxt


def _v5_variables(path, blob: bytes, order: str):
    """Every matrix of a v5 file, headers parsed; a compressed one inflated to what its shape needs."""
    at = 128
    while at + 8 <= len(blob):
        mtype, nbytes = struct.unpack_from(order + "II", blob, at)
        body = blob[at + 8 : at + 8 + nbytes]
        at += 8 + nbytes + (0 if mtype == _MI_COMPRESSED else -nbytes % 8)
        if mtype == _MI_COMPRESSED:
            inflater = zlib.decompressobj()
            try:
                head = inflater.decompress(body, _HEADER_BYTES)
                if len(head) < 8:
                    raise DataError(path, "corrupt .mat file: a compressed variable is empty")
                mtype, nbytes = struct.unpack_from(order + "II", head)
                var = _header(path, head[8:], order, mtype)
                if (
                    var is not None
                    and var.cls in _NUMERIC
                    and 0 <= math.prod(var.shape) <= MAX_VOXELS
                    and min(var.shape, default=0) >= 0
                ):
                    room = nbytes - len(head) + 8
                    if room > 16 * math.prod(var.shape) + _HEADER_BYTES:  # complex double at most
                        raise DataError(
                            path, f"corrupt .mat file: {var.name!r} declares {nbytes} bytes for shape {var.shape}"
                        )
                    rest = inflater.decompress(inflater.unconsumed_tail, max(room, 0) + 1)
                    var.data = (head + rest)[8 : 8 + nbytes]
            except zlib.error as e:
                raise DataError(path, f"corrupt .mat file: a compressed variable does not inflate ({e})") from None
        else:
            var = _header(path, body, order, mtype)
        if var is not None:
            yield var


def _header(path, body: bytes, order: str, mtype: int) -> _Variable | None:
    """Parse a miMATRIX's flags, dims and name (None for other top-level elements, which MATLAB ignores)."""
    if mtype != _MI_MATRIX:
        return None
    ftype, fstart, fend, at = _element(path, body, 0, order)
    if ftype != _MI_UINT32 or fend - fstart < 4:
        raise DataError(path, f"corrupt .mat file: array flags of type {ftype}, expected miUINT32")
    flags = struct.unpack_from(order + "I", body, fstart)[0]
    dtype_, dstart, dend, at = _element(path, body, at, order)
    if dtype_ != _MI_INT32 or (dend - dstart) % 4:
        raise DataError(path, f"corrupt .mat file: dimensions of type {dtype_}, expected miINT32")
    shape = tuple(int(d) for d in np.frombuffer(body, order + "i4", (dend - dstart) // 4, dstart))
    ntype, nstart, nend, at = _element(path, body, at, order)
    if ntype != _MI_INT8:
        raise DataError(path, f"corrupt .mat file: array name of type {ntype}, expected miINT8")
    name = body[nstart:nend].decode("latin-1")
    cls = "logical" if flags & _LOGICAL else _CLASSES.get(flags & 0xFF, f"class {flags & 0xFF}")
    if flags & _COMPLEX and cls in _NUMERIC:
        cls = f"complex {cls}"  # not an occupancy grid
    return _Variable(name, shape, cls, flags, body, at, order)

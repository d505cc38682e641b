"""MATLAB .mat voxel files (MATLAB v5 through scipy; v7.3/HDF5 is refused with a clear error).

Known layouts (REFERENCE.md): 3D ShapeNets key ``instance`` (30^3 int8), DRC key ``Volume`` (32^3),
ShapeNet-challenge key ``input`` (256^3).

scipy's reader trusts the file: a negative declared dimension or an unknown data-element type
crashes the process (found by benchmarks/fuzz.py), a huge dimension is allocated. So the variable is
chosen from the headers (``scipy.io.whosmat``), its shape is checked, and its data elements are
checked (types, sizes, a compressed one's inflated size) before ``scipy.io.loadmat`` reads it alone.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np
import scipy.io

from r2n2.data.errors import DataError
from r2n2.data.formats.limits import MAX_VOXELS

# MATLAB v7.3 files are HDF5 containers whose 128-byte text header says so
_V73_HEADER = b"MATLAB 7.3 MAT-file"


def read_mat(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read the voxel array of a .mat file: ``key`` if given, else the file's single 3D array.

    Returns the array as stored (any dtype, any 3D shape); ``load_voxels`` checks and resizes it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except FileNotFoundError:
        raise DataError(path, "voxel file not found") from None
    except OSError as e:
        raise DataError(path, f"unreadable .mat file ({e.strerror or e})") from None
    if head.startswith(_V73_HEADER):
        raise DataError(
            path,
            "MATLAB v7.3 (HDF5) .mat files are not supported: re-save it with save(..., '-v7') "
            "or convert it to .npy",
        )
    name, shape = _choose(path, key)
    _check_v5_tags(path, name, shape)
    try:
        mat = scipy.io.loadmat(path, variable_names=[name])
    except NotImplementedError as e:  # scipy's own v7.3 detection
        raise DataError(path, f"MATLAB v7.3 (HDF5) .mat files are not supported ({e})") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on corrupt files
        raise DataError(path, f"unreadable .mat file ({type(e).__name__}: {e})") from None
    if name not in mat:
        raise DataError(path, f"unreadable .mat file (variable {name!r} is listed but cannot be read)")
    return np.asarray(mat[name])


def _choose(path, key: str | None) -> tuple[str, tuple[int, ...]]:
    """The variable to read, from the file's headers only (``scipy.io.whosmat``): ``key``, or the
    single 3D numeric array. Declared shapes are checked here, before anything is allocated: scipy
    trusts them (a negative dimension crashes it, a huge one allocates it)."""
    try:
        listing = scipy.io.whosmat(path)
    except NotImplementedError as e:
        raise DataError(path, f"MATLAB v7.3 (HDF5) .mat files are not supported ({e})") from None
    except Exception as e:  # noqa: BLE001 - scipy raises many types on corrupt headers
        raise DataError(path, f"unreadable .mat file ({type(e).__name__}: {e})") from None
    arrays = {name: (tuple(shape), cls) for name, shape, cls in listing if not name.startswith("__")}
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
            raise DataError(path, f"several 3D arrays in .mat file {sorted(found)}: choose one with data.source.voxel_key")
    name, (shape, cls) = next(iter(found.items()))
    if cls not in _NUMERIC:
        raise DataError(path, f"{name!r} in .mat file is a {cls} {shape}, not a numeric array")
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_VOXELS:
        raise DataError(path, f"{name!r} in .mat file declares shape {shape}: corrupt, or more than "
                              f"{MAX_VOXELS} voxels")
    return name, shape


# MATLAB classes that hold numbers (whosmat's names); cells, structs, chars, objects and sparse do not
_NUMERIC = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "logical"}


# MATLAB v5 data types (the MAT-file format, table 1-1); scipy indexes a 20-entry table with the type
# of each data element it reads, so any other value crashes the process (SIGSEGV)
_MI_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18}
_MI_MATRIX, _MI_COMPRESSED = 14, 15


def _check_v5_tags(path, name: str, shape: tuple[int, ...]) -> None:
    """Check the data elements of variable ``name`` of a MATLAB v5 file before scipy reads them: each
    of a known type and inside its matrix; a compressed one inflating to no more than its ``shape``
    needs (a zlib bomb is refused, not inflated). v4 files (read by numpy code in scipy) pass as is."""
    with open(path, "rb") as f:
        head = f.read(128)
        order = {b"IM": "<", b"MI": ">"}.get(head[126:128])
        if order is None or head[124:126] not in (b"\x00\x01", b"\x01\x00"):
            return  # not v5: scipy's v4 reader is plain numpy
        budget = 8 * 2 * math.prod(shape) + 4096  # complex double at most, plus the sub-elements' headers
        while tag := f.read(8):
            if len(tag) < 8:
                return  # trailing bytes: scipy stops reading there
            mtype, nbytes = struct.unpack(order + "II", tag)
            if mtype == _MI_COMPRESSED:
                matrix = _inflate(path, f.read(nbytes), budget)
            elif mtype == _MI_MATRIX:
                matrix = tag + f.read(min(nbytes, budget))
                f.seek(nbytes - min(nbytes, budget) + (-nbytes % 8), 1)
            else:
                return  # scipy refuses anything but matrices with a clear error
            if _matrix_name(matrix, order) == name:
                _check_elements(path, matrix, order)


def _inflate(path, data: bytes, budget: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, budget + 1)
    except zlib.error as e:
        raise DataError(path, f"unreadable .mat file (corrupt compressed variable: {e})") from None
    if len(out) > budget:
        raise DataError(path, "corrupt .mat file: a compressed variable inflates to more than its shape needs")
    return out


def _element(matrix: bytes, at: int, order: str) -> tuple[int, int, int, int]:
    """(type, start of its data, end of its data, start of the next element) of the data element
    at ``at``; the small format packs type and size in 4 bytes and the data in the other 4."""
    mtype, nbytes = struct.unpack_from(order + "II", matrix, at)
    if mtype >> 16:
        return mtype & 0xFFFF, at + 4, at + 4 + (mtype >> 16), at + 8
    return mtype, at + 8, at + 8 + nbytes, at + 8 + nbytes + (-nbytes % 8)


def _matrix_name(matrix: bytes, order: str) -> str | None:
    """The variable name of a miMATRIX element (flags, dims, name are its first three sub-elements)."""
    try:
        at = _element(matrix, _element(matrix, 8, order)[3], order)[3]
        _, start, end, _ = _element(matrix, at, order)
        return matrix[start:end].decode("latin-1")
    except struct.error:
        return None


def _check_elements(path, matrix: bytes, order: str) -> None:
    at, end = 8, min(len(matrix), 8 + struct.unpack_from(order + "I", matrix, 4)[0])
    while at < end:
        if end - at < 8:
            raise DataError(path, "corrupt .mat file: a data element's tag is cut off")
        mtype, _, data_end, at = _element(matrix, at, order)
        if mtype not in _MI_TYPES:
            raise DataError(path, f"corrupt .mat file: data element of unknown type {mtype}")
        if data_end > end:
            raise DataError(path, f"corrupt .mat file: a data element runs {data_end - end} bytes past its variable")

"""NumPy voxel arrays: .npy, and .npz holding one 3D array (or the one named by ``key``).

Why not ``np.load``: it allocates whatever shape a header declares before reading the data, so a
100-byte file declaring (4096,)^3 was a 64 GiB MemoryError naming no file. Here each header is read
first (``numpy.lib.format``; an .npz is a zip of .npy members) and its declared size checked against
``MAX_VOXELS`` and against the bytes the file (or zip member) holds before anything is allocated.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

from r2n2.data.errors import DataError
from r2n2.data.formats.limits import MAX_VOXELS

# what a corrupt file or zip member can raise while its header or data is read (numpy: TokenError
# from an unparsable header; zipfile: RuntimeError for encrypted members, NotImplementedError for
# unknown compression)
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    SyntaxError,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)
# np.load's rule: a zip (an .npz) starts with a local file header, or, empty, with its end record
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def read_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read a voxel array from .npy or .npz. Returns it as stored (``load_voxels`` checks it)."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) in _ZIP_MAGIC
            f.seek(0)
            if zipped:
                return _read_npz(path, f, key)
            return _read_member(path, "file", f, os.fstat(f.fileno()).st_size)
    except DataError:  # a ValueError too: keep its own message
        raise
    except FileNotFoundError:
        raise DataError(path, "voxel file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a .npy or .npz file") from None
    except _READ_ERRORS as e:
        raise DataError(path, f"unreadable NumPy file ({type(e).__name__}: {e})") from None


def _read_npz(path, f: BinaryIO, key: str | None) -> np.ndarray:
    """The array ``key``, or the single 3D array, of the zip ``f``; chosen by the members' headers."""
    with zipfile.ZipFile(f) as zf:
        members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
        if key is not None:
            if key not in members:
                raise DataError(path, f"no key {key!r} in .npz file; it holds {list(members)}")
            found = [key]
        else:
            found = []
            for name, info in members.items():
                with zf.open(info) as m:
                    if len(_header(path, f"member {name!r}", m)[0]) == 3:
                        found.append(name)
            if len(found) != 1:
                raise DataError(
                    path, f"expected one 3D array in .npz file, found {found or 'none'} among {list(members)}"
                )
        info = members[found[0]]
        with zf.open(info) as m:
            return _read_member(path, f"member {found[0]!r}", m, info.file_size)


def _header(path, what: str, f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) declared by the .npy header at ``f``'s position."""
    version = npformat.read_magic(f)
    read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise DataError(path, f"{what} holds Python objects ({dtype}), not a voxel grid")
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_VOXELS:
        raise DataError(path, f"{what} declares shape {shape} of {dtype}: more than {MAX_VOXELS} voxels, or corrupt")
    return shape, fortran, dtype


def _read_member(path, what: str, f: BinaryIO, size: int) -> np.ndarray:
    """The array of the .npy at ``f`` (``size`` bytes in all), its declared size checked first."""
    shape, fortran, dtype = _header(path, what, f)
    nbytes, held = math.prod(shape) * dtype.itemsize, size - f.tell()
    if nbytes > held:
        raise DataError(path, f"{what} declares shape {shape} of {dtype}: {nbytes} bytes, it holds {held} (truncated)")
    data = bytearray(nbytes)
    if (got := f.readinto(data)) != nbytes:
        raise DataError(path, f"{what} declares shape {shape} of {dtype}: {nbytes} bytes, the file holds {got}")
    return np.frombuffer(data, dtype, math.prod(shape)).reshape(shape, order="F" if fortran else "C")

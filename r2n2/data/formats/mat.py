"""MATLAB .mat voxel files (MATLAB v5 through scipy; v7.3/HDF5 is refused with a clear error).

Known layouts (REFERENCE.md): 3D ShapeNets key ``instance`` (30^3 int8), DRC key ``Volume`` (32^3),
ShapeNet-challenge key ``input`` (256^3).
"""

from __future__ import annotations

import os

import numpy as np
import scipy.io

from r2n2.data.errors import DataError

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
    if head.startswith(_V73_HEADER):
        raise DataError(
            path,
            "MATLAB v7.3 (HDF5) .mat files are not supported: re-save it with save(..., '-v7') "
            "or convert it to .npy",
        )
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as e:  # scipy's own v7.3 detection
        raise DataError(path, f"MATLAB v7.3 (HDF5) .mat files are not supported ({e})") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on corrupt files
        raise DataError(path, f"unreadable .mat file ({type(e).__name__}: {e})") from None
    arrays = {k: v for k, v in mat.items() if not k.startswith("__")}
    if key is not None:
        if key not in arrays:
            raise DataError(path, f"no key {key!r} in .mat file; it holds {sorted(arrays)}")
        return np.asarray(arrays[key])
    found = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray) and v.ndim == 3}
    if not found:
        shapes = {k: getattr(v, "shape", type(v).__name__) for k, v in arrays.items()}
        raise DataError(path, f"no 3D array in .mat file (it holds {shapes})")
    if len(found) > 1:
        raise DataError(
            path, f"several 3D arrays in .mat file {sorted(found)}: choose one with data.mat_key"
        )
    return np.asarray(next(iter(found.values())))

"""NumPy voxel arrays: .npy, and .npz holding one 3D array (or the one named by ``key``)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from r2n2.data.errors import DataError


def read_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Read a voxel array from .npy or .npz. Returns it as stored (``load_voxels`` checks it)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, "voxel file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(path, f"unreadable NumPy file ({e})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        if key is not None:
            if key not in names:
                raise DataError(path, f"no key {key!r} in .npz file; it holds {names}")
            return loaded[key]
        found = [k for k in names if loaded[k].ndim == 3]
        if len(found) != 1:
            raise DataError(path, f"expected one 3D array in .npz file, found {found or 'none'} among {names}")
        return loaded[found[0]]

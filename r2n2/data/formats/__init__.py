"""Voxel and image file formats, and ``load_voxels``: any supported voxel file -> an R^3 grid
(``data.resolution``: 32, 64 or 128)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from r2n2.data.errors import DataError
from r2n2.data.formats.arrays import read_array
from r2n2.data.formats.binvox import Binvox, read_binvox, write_binvox
from r2n2.data.formats.images import composite, read_rgba
from r2n2.data.formats.limits import MAX_VOXELS
from r2n2.data.formats.mat import read_mat

VOXEL_SUFFIXES = (".binvox", ".mat", ".npy", ".npz")
# ShapeNetVox32 resolution, the seed model's output and data.resolution's default (the paper's)
RESOLUTION = 32
# data.resolution's choices: 32 and each doubling an up-convolution decoder adds (r2n2/models/decoders.py)
RESOLUTIONS = (32, 64, 128)


def check_resolution(resolution: int) -> int:
    """``resolution`` as an int, or a ValueError naming the value and the choices."""
    if isinstance(resolution, bool) or int(resolution) != resolution or int(resolution) not in RESOLUTIONS:
        raise ValueError(f"data.resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    return int(resolution)


def load_voxels(path: str | os.PathLike, key: str | None = None, resolution: int = RESOLUTION) -> np.ndarray:
    """Load any supported voxel file as ``(R, R, R) bool``.

    .binvox is returned in (x, y, z) order; .mat/.npy/.npz arrays keep their stored axis order.
    A cubic grid of another resolution is brought to ``resolution`` by 3D adaptive max pooling,
    as the seed report did for its .mat data (so thin parts survive down-sampling). Above the
    default 32, a grid coarser than ``resolution`` is refused (a ``DataError`` naming the file):
    pooling it up would only repeat its voxels. At 32 the seed report's 30^3 3D ShapeNets grids
    stay accepted as before (pooling 30 -> 32 repeats two slices).
    ``key`` picks the array in a .mat/.npz file (e.g. ``Volume``, ``instance``, ``input``).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".binvox":
        grid = read_binvox(path).data
    elif suffix == ".mat":
        grid = read_mat(path, key)
    elif suffix in (".npy", ".npz"):
        grid = read_array(path, key)
    else:
        raise DataError(path, f"unsupported voxel format {suffix!r}; expected one of {VOXEL_SUFFIXES}")
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise DataError(path, f"voxel grid must be cubic (N, N, N), got shape {tuple(grid.shape)}")
    if grid.size == 0:  # cubic but nothing to pool: say so here, not as torch's error naming no file
        raise DataError(path, f"voxel grid is empty: shape {tuple(grid.shape)}")
    if grid.dtype.kind not in "biuf":  # bool, integers, floats: complex, strings, objects are no occupancy
        raise DataError(path, f"voxel grid has non-numeric dtype {grid.dtype}")
    if grid.size > MAX_VOXELS:
        raise DataError(path, f"voxel grid {tuple(grid.shape)} has more than {MAX_VOXELS} voxels")
    if grid.shape[0] < resolution and resolution > RESOLUTION:
        raise DataError(
            path,
            f"voxel grid {tuple(grid.shape)} is coarser than data.resolution={resolution}; "
            f"use a {resolution}^3 or finer grid, or a lower data.resolution",
        )
    occupied = np.asarray(grid) > 0
    if occupied.shape[0] != resolution:
        import torch  # imported here: the readers above are used by processes that need no torch
        import torch.nn.functional as F

        pooled = F.adaptive_max_pool3d(torch.from_numpy(occupied).float()[None, None], resolution)
        occupied = pooled[0, 0].numpy() > 0
    return occupied


__all__ = [
    "Binvox",
    "DataError",
    "RESOLUTION",
    "RESOLUTIONS",
    "VOXEL_SUFFIXES",
    "check_resolution",
    "composite",
    "load_voxels",
    "read_array",
    "read_binvox",
    "read_mat",
    "read_rgba",
    "write_binvox",
]

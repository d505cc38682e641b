"""Independent reference implementations used by several tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def naive_binvox(path: Path) -> tuple[np.ndarray, tuple, tuple, float]:
    """Decode a binvox file the slow, obvious way: header lines by hand, then one Python loop over
    (value, count) pairs, reshape to the header's dims in the file's (x, z, y) order, transpose
    (0, 2, 1) to (x, y, z) as binvox_rw's read_as_3d_array does by default.
    Returns (data, dims, translate, scale)."""
    blob = path.read_bytes()
    lines, pos = [], 0
    while True:
        end = blob.index(b"\n", pos)
        lines.append(blob[pos:end].decode().strip())
        pos = end + 1
        if lines[-1] == "data":
            break
    assert lines[0].startswith("#binvox")
    fields = {ln.split()[0]: ln.split()[1:] for ln in lines[1:-1]}
    dims = tuple(int(d) for d in fields["dim"])
    translate = tuple(float(t) for t in fields["translate"])
    scale = float(fields["scale"][0])
    body = blob[pos:]
    flat: list[bool] = []
    for i in range(0, len(body), 2):
        value, count = body[i], body[i + 1]
        flat.extend([bool(value)] * count)
    assert len(flat) == dims[0] * dims[1] * dims[2]
    return np.array(flat, dtype=bool).reshape(dims).transpose(0, 2, 1), dims, translate, scale

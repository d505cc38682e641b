"""What every source yields (``ObjectRecord``), the source interface, and the bad-input policy."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from r2n2.data.errors import DataError
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ObjectRecord:
    """One object: its views and its voxel file.

    object_id: unique within the source, e.g. ``"03001627/1a6f615e8b1b5ae4dbbc9440457e303e"``
    category: category name, e.g. ``"chair"``
    images: paths of the object's views (any number >= 1)
    voxels: path of its voxel file (.binvox, .mat, .npy or .npz)
    split: ``"train" | "val" | "test"`` where the source fixes it (taxonomy file, manifest column),
        else ``None`` and the split is drawn per object from a seed
    """

    object_id: str
    category: str
    images: tuple[str, ...]
    voxels: str
    split: str | None = None


class Source(Protocol):
    """A dataset source. ``prepare`` may write (rank 0 only); ``records`` only reads."""

    #: key of the voxel array in .mat/.npz files, or None to take the single 3D array
    voxel_key: str | None
    #: the side R of the R^3 grids asked for (``data.resolution``; ``R2N2DataModule`` sets it)
    resolution: int

    def prepare(self, sizes: dict[str, int | None]) -> None:
        """Make the data exist (e.g. generate it); ``sizes`` are the requested split sizes."""

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None]) -> list[ObjectRecord]:
        """All objects of the source, in a deterministic order (``sizes`` as given to ``prepare``)."""

    def describe(self) -> dict:
        """Plain, JSON-able identity of the source (goes into the cache key)."""

    def fingerprint(self, sizes: dict[str, int | None]) -> str:
        """A digest that changes when the data does (goes into the cache key), read without listing
        every file where the source can (ShapeNet: its folders); see ``files_fingerprint``."""


def stamp(path: str | os.PathLike) -> str:
    """A file's or folder's (modification time, change time, inode), or "missing"."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def files_fingerprint(records: list[ObjectRecord]) -> str:
    """SHA-256 over every record (id, category, split) and each of its files' size and times: what
    changes when any file does; it stats every file, so sources with many use their folders instead."""
    h = hashlib.sha256()
    for rec in records:
        h.update(f"{rec.object_id}\0{rec.category}\0{rec.split}\n".encode())
        for path in (rec.voxels, *rec.images):
            try:
                st = os.stat(path)
                h.update(f"{path}\0{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


class ErrorPolicy:
    """What to do with bad input: ``raise`` it, or ``skip`` the sample and remember why.

    Skipped items are logged and written as JSON (``[{"path", "fault"}]``) by ``write``.
    """

    def __init__(self, mode: str = "raise"):
        if mode not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped: list[dict[str, str]] = []

    def handle(self, err: DataError) -> None:
        """Raise ``err`` in ``raise`` mode; record it in ``skip`` mode."""
        if self.mode == "raise":
            raise err
        self.skipped.append({"path": err.path or "", "fault": err.fault})

    def write(self, path: Path, what: str, final: Path | None = None, dropped: int | None = None) -> None:
        """Log how many faults were skipped and which, and write them to ``path`` (JSON, atomically);
        with none, remove a ``path`` left by an earlier listing, so it never lists faults fixed since.

        final: where ``path`` will be once its folder is moved into place (the log names that path).
        dropped: how many samples the faults cost, where the caller knows (one bad voxel file drops
            every view of its object), so the log does not pass faults off as samples.
        """
        if not self.skipped:
            Path(path).unlink(missing_ok=True)
            return
        with atomic_write(path, "w") as f:
            json.dump(self.skipped, f, indent=1)
        shown = "; ".join(f"{s['path']}: {s['fault']}" for s in self.skipped[:5])
        more = f" (+{len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
        lost = " or entries" if dropped is None else f": {dropped} samples dropped"
        log.warning(
            "%s: skipped %d bad file(s)%s (list in %s): %s%s", what, len(self.skipped), lost, final or path, shown, more
        )

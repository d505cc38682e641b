"""``AtomicCheckpointIO``: Lightning writes every checkpoint through ``r2n2.utils.atomic.atomic_write``.

A checkpoint is serialised in memory first (a failure there never touches the disk), written to a
hidden temporary file beside its target, fsynced and renamed over it: after a kill, a full disk or a
power cut, ``last.ckpt`` and ``best.ckpt`` are the old checkpoint or the complete new one, never a
torn one. (Lightning's own writer renames through fsspec without fsync.) Remote URLs (``s3://``...)
are left to Lightning.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from r2n2.utils.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file, fsync, ``os.replace``; loading is Lightning's."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_write(path) as f:
            f.write(buffer.getbuffer())

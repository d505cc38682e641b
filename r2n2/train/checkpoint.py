"""Loading training checkpoints safely (``weights_only=True``) with errors a user can act on."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from r2n2.train.module import ReconstructionModule


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, not a checkpoint, or from another model."""


# torch.save (PyTorch >= 1.6, which Lightning uses) writes a zip archive of uncompressed entries
_ZIP_MAGIC = b"PK\x03\x04"


def _check_archive(path: Path) -> None:
    """Refuse, before torch reads it, a file that is not a complete torch.save zip archive, or one
    whose directory declares more bytes than the file holds (torch would allocate them)."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (truncated: a checkpoint write that never finished?)")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_ZIP_MAGIC):
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: it starts with {head!r}, not a torch.save "
            "zip archive (written by another program?)"
        )
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path}: truncated or damaged PyTorch checkpoint (its zip directory is unreadable: {e})"
        ) from None
    if not any(e.filename.endswith("/data.pkl") or e.filename == "data.pkl" for e in entries):
        raise CheckpointError(
            f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl): written by another program?"
        )
    declared = sum(e.file_size for e in entries)
    if declared > size or any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise CheckpointError(
            f"{path}: damaged PyTorch checkpoint (its entries declare {declared} bytes, "
            f"compressed or more than the file's {size}): not written by torch.save"
        )


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0].removeprefix("[enforce fail at inline_container.cc:")[:200]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` of an r2n2 training checkpoint, or ``CheckpointError``
    saying what is wrong (missing, empty, truncated, not a checkpoint, written by another program)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a Python object: never suggest unpickling it
        raise CheckpointError(
            f"{path}: holds Python objects other than tensors and plain containers, so it was "
            "not written by this project (written by another program; not loaded, for safety)"
        ) from None
    except Exception as e:  # torch's zip reader and rebuilders raise RuntimeError and others on damaged data
        detail = f"{type(e).__name__}: {_first_sentence(e)}" if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: truncated or damaged PyTorch checkpoint ({detail})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict / hyper_parameters)")
    net = ckpt["hyper_parameters"].get("net")
    if not isinstance(net, dict) or "_target_" not in net or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: a checkpoint of another model (its hyper_parameters name no r2n2 network)")
    return ckpt


def load_module(path: str | os.PathLike) -> tuple[ReconstructionModule, dict]:
    """The trained module (eval mode) and its checkpoint dict; ``CheckpointError`` if they do not fit."""
    ckpt = load_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    try:
        module = ReconstructionModule(**hp)
    except Exception as e:  # the network it names cannot be built here
        raise CheckpointError(
            f"{path}: cannot build its network {hp['net'].get('_target_')} ({_first_sentence(e)})"
        ) from None
    try:
        module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: its weights do not fit the network it names ({detail})") from None
    return module.eval(), ckpt

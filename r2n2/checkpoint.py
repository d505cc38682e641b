"""Loading training checkpoints safely (``weights_only=True``) with errors a user can act on."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from r2n2.module import ReconstructionModule


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, not a checkpoint, or from another model."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` of an r2n2 training checkpoint, or ``CheckpointError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another file type: {first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict / hyper_parameters)")
    if "net" not in ckpt["hyper_parameters"] or "_target_" not in (ckpt["hyper_parameters"]["net"] or {}):
        raise CheckpointError(f"{path}: a checkpoint of another model (its hyper_parameters name no r2n2 network)")
    return ckpt


def load_module(path: str | os.PathLike) -> tuple[ReconstructionModule, dict]:
    """The trained module (eval mode) and its checkpoint dict; ``CheckpointError`` if they do not fit."""
    ckpt = load_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    try:
        module = ReconstructionModule(**hp)
    except Exception as e:  # the network it names cannot be built here
        raise CheckpointError(f"{path}: cannot build its network {hp['net'].get('_target_')} ({e})") from None
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: its weights do not fit the network it names ({detail})") from None
    return module.eval(), ckpt

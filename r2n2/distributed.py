"""The end of a DDP rank: close its ``torch.distributed`` process group before the interpreter exits."""

from __future__ import annotations

import torch


def close_process_group() -> None:
    """Destroy this process's ``torch.distributed`` process group, if it has one (a DDP rank).

    Lightning destroys it at exit for NCCL only. A gloo group (DDP on CPUs, ``trainer=ddp_cpu``, CPU
    SLURM jobs) left to the interpreter's exit aborts the process now and then ("terminate called without
    an active exception", exit 134: 7 of 30 two-process runs on the 2-core development machine), and
    SLURM then cancels the whole job step. Destroying the group is local to the process (no collective),
    so a rank that finishes first may close it while rank 0 still writes the run's files."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

"""The end of a DDP rank: close its ``torch.distributed`` process group before the process goes on."""

from __future__ import annotations

import torch


def close_process_group(wait_for_all: bool = False) -> None:
    """Destroy this process's ``torch.distributed`` process group, if it has one (a DDP rank).

    Lightning destroys it at exit for NCCL only. A gloo group (DDP on CPUs, ``trainer=ddp_cpu``, CPU
    SLURM jobs) left to the interpreter's exit aborts the process now and then ("terminate called without
    an active exception", exit 134: 7 of 30 two-process runs on the 2-core development machine), and
    SLURM then cancels the whole job step. Destroying is local to the process (no collective), so a rank
    that finishes first may close it while rank 0 still writes the run's files.

    wait_for_all: first a barrier, for a process that starts another group next (the next job of a
    multirun in the same process, e.g. a sweep run by srun): a rank that finished first would otherwise
    meet rank 0's old group, still open, at its next rendezvous (same address and port, same store keys).
    Only where every rank gets here: not after an error on this rank.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait_for_all:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()

"""Keep the CPU memory a training step frees for the next step, instead of giving it back to the kernel.

glibc's malloc serves a request above its mmap threshold (128 KiB at start, raised on the fly to at
most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A training step on the CPU allocates
and frees activations of tens of MB (batch 16: the encoder's first output alone is 16 x 96 x 127 x
127 values), so every step maps them again and the kernel zero-fills every page on first touch:
~5 million minor page faults and ~12 s of kernel time in a 50-second ``r2n2-bench`` run on the
2-core development machine. With both the mmap and the trim threshold at 1 GiB the freed memory
stays in malloc's heap and is reused: training samples/s +20-25% there, the same as preloading
tcmalloc, which PyTorch's CPU performance guide recommends (``benchmarks/malloc_speed.py``,
docs/performance.md). The cost: the process keeps its peak heap until it exits.

Set in the process that trains (DataLoader workers forked later inherit it). Left alone where the
C library is not glibc, where the user chose an allocator or malloc settings (``LD_PRELOAD``,
``GLIBC_TUNABLES``), or with ``R2N2_SYSTEM_MALLOC=1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
THRESHOLD = 1 << 30  # 1 GiB: above any one activation of the networks here; mallopt takes an int
OPT_OUT = "R2N2_SYSTEM_MALLOC"


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB in this process; True if it did."""
    if os.environ.get(OPT_OUT) == "1" or os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
    if done:
        log.debug("glibc malloc: mmap and trim thresholds at %d bytes (%s=1 leaves them alone)", THRESHOLD, OPT_OUT)
    return done

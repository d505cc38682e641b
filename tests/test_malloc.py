"""r2n2.train.malloc: freed CPU memory is reused instead of unmapped and faulted in again at every step.

Each case runs in a fresh process (malloc settings are process-wide): a 64 MB float tensor is
allocated, written and freed 16 times, as training steps do with their activations, and the
process's minor page faults are counted per round (getrusage). With the thresholds raised glibc
grows its heap for the first rounds (7 here: a freed block is not yet reusable for the next aligned
request) and then reuses it; the last 4 rounds are compared.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="r2n2.train.malloc sets glibc's malloc thresholds",
)

PROBE = r"""
import json, resource, torch
from r2n2.train.malloc import keep_freed_memory
applied = keep_freed_memory()
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)  # 64 MB, every page written
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(**env) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("R2N2_SYSTEM_MALLOC", "LD_PRELOAD", "GLIBC_TUNABLES")} | env
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_freed_buffer_is_reused_without_new_page_faults():
    """glibc's defaults unmap a freed 64 MB buffer, so every new one faults in its 16,384 pages again;
    with the thresholds raised the heap is reused once it has grown, and the late rounds do not fault."""
    default, kept = _probe(R2N2_SYSTEM_MALLOC="1"), _probe()
    assert default["applied"] is False and kept["applied"] is True
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert min(default["faults"][-4:]) > pages // 2, default  # each round maps and faults the buffer again
    assert sum(kept["faults"][-4:]) < pages // 10, kept  # reused


def test_a_chosen_allocator_or_malloc_tuning_is_left_alone():
    assert _probe(GLIBC_TUNABLES="glibc.malloc.check=0")["applied"] is False

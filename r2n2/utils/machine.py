"""One line naming the machine a measurement ran on (GPU name, or CPU model and core count)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> str:
    """E.g. ``"NVIDIA H100 80GB HBM3"`` or ``"AMD EPYC, 2 CPU cores"``."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores"

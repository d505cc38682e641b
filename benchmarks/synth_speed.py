"""Generation speed of the built-in synthetic ShapeNet (``r2n2.data.synth.generate_dataset``).

    python benchmarks/synth_speed.py                      # the default: 13 x 128 objects x 6 views
    python benchmarks/synth_speed.py --objects-per-category 4 --views 8 --workers 1

Target (the synthetic-ShapeNet issue): the default dataset in under 3 minutes on the 2-core CPU machine.
Writes into a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from r2n2.data.synth import CATEGORIES, generate_dataset
from r2n2.data.synth.generate import DEFAULT_OBJECTS_PER_CATEGORY, DEFAULT_VIEWS
from r2n2.utils.machine import describe_machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects-per-category", type=int, default=DEFAULT_OBJECTS_PER_CATEGORY)
    ap.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    ap.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where to put the temporary dataset (default: system temp)")
    args = ap.parse_args()
    workers = args.workers or os.cpu_count()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        start = time.perf_counter()
        root = generate_dataset(
            Path(tmp) / "synth",
            objects_per_category=args.objects_per_category,
            views=args.views,
            seed=args.seed,
            workers=workers,
        )
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    objects = len(CATEGORIES) * args.objects_per_category
    images = objects * args.views
    rows = [
        ("objects", f"{objects} ({len(CATEGORIES)} categories x {args.objects_per_category})"),
        ("views per object", str(args.views)),
        ("images", str(images)),
        ("seconds", f"{seconds:.1f}"),
        ("images/s", f"{images / seconds:.1f}"),
        ("objects/s", f"{objects / seconds:.2f}"),
        ("dataset size", f"{size / 2**20:.1f} MiB"),
        ("workers", str(workers)),
        ("machine", f"{describe_machine()}, Python {platform.python_version()}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}} | value\n{'-' * width}-|------")
    for key, value in rows:
        print(f"{key:<{width}} | {value}")


if __name__ == "__main__":
    main()

"""Cache read speed: samples/s from the packed cache, raw and as preprocessed training batches.

    python benchmarks/cache_speed.py                     # the built-in synthetic dataset
    python benchmarks/cache_speed.py --root ../shared/data/r2n2-sample   # a ShapeNet-layout folder

Target (issue 2): >= 5,000 samples/s on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from r2n2.data.datamodule import R2N2DataModule
from r2n2.data.sources import ShapeNetSource, SyntheticSource
from r2n2.utils.machine import describe_machine


def timed(fn, min_seconds: float) -> float:
    """Run ``fn`` (which returns a sample count) until ``min_seconds`` pass; return samples/s."""
    fn()  # warm-up: page cache, worker start
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        n += fn()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="a ShapeNet-layout folder (default: the synthetic dataset)")
    ap.add_argument("--data-dir", default="data", help="where the synthetic dataset lives")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    source = ShapeNetSource(args.root) if args.root else SyntheticSource(os.path.join(args.data_dir, "synthetic"))
    with tempfile.TemporaryDirectory() as cache:
        rows = []
        for workers in (0, 2):
            dm = R2N2DataModule(
                source, cache_dir=cache, batch_size=args.batch_size, num_workers=workers, persistent_workers=workers > 0
            )
            dm.prepare_data()
            dm.setup()
            ds = dm.datasets["train"]
            if workers == 0:
                idx = torch.randperm(len(ds)).tolist()
                rows.append(
                    ("raw items (dataset[i], uint8)", 0, timed(lambda: [ds[i] for i in idx] and len(idx), args.seconds))
                )
            loader = dm.train_dataloader()
            rows.append(
                (
                    f"train batches of {args.batch_size} (uint8 rgba, as they reach the device)",
                    workers,
                    timed(lambda: sum(len(b["voxels"]) for b in loader), args.seconds),
                )
            )
        print(f"\ncache reads on {describe_machine()}, torch {torch.__version__}; {len(ds)} training samples\n")
        print("| what | workers | samples/s |\n|---|---|---|")
        for what, workers, rate in rows:
            print(f"| {what} | {workers} | {rate:,.0f} |")


if __name__ == "__main__":
    main()

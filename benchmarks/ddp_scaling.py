"""DDP scaling on this machine: the same training as 1 process and as N DDP ranks (gloo on the CPU,
the code path trainer=slurm takes on a cluster, minus srun), with samples/s, its ratio to 1 rank,
and the val IoU each reaches after the same number of epochs.

    python benchmarks/ddp_scaling.py                       # 1 and 2 ranks, 2 epochs, a small synthetic set
    python benchmarks/ddp_scaling.py --ranks 1 2 4 --epochs 3 --objects 16 --precision 32

Each rank keeps data.batch_size, so N ranks take N times fewer, N times larger steps per epoch
(global batch N x batch_size): the val IoU column shows what that costs at an equal epoch count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r2n2.utils.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def run(ranks: int, args, data_dir: str, out: Path) -> dict:
    # trainer=ddp_cpu: the script launcher (strategy ddp, as trainer=ddp and slurm): rank 0 keeps the
    # throughput callback's figures
    trainer = ["trainer=cpu"] if ranks == 1 else ["trainer=ddp_cpu", f"trainer.devices={ranks}"]
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *trainer,
        f"paths.data_dir={data_dir}",
        f"data.source.objects_per_category={args.objects}",
        f"data.source.views={args.views}",
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.precision={args.precision}",
        "data.num_workers=0",
        "logger=none",
        "test=false",
        "module.viz_every_n_epochs=0",
        "trainer.enable_progress_bar=false",
        "extras.print_config=false",
        f"hydra.run.dir={out}",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_seconds"] = time.perf_counter() - start
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--objects", type=int, default=4, help="synthetic objects per category")
    ap.add_argument("--views", type=int, default=8, help="views per object")
    ap.add_argument("--batch-size", type=int, default=16, help="per rank")
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--data-dir", default=None, help="synthetic data folder (default: a temporary one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or os.path.join(tmp, "data")
        rows = []
        for ranks in args.ranks:
            m = run(ranks, args, data_dir, Path(tmp) / f"ranks{ranks}")
            rows.append((ranks, m))
    load = os.getloadavg()[0]
    base = rows[0][1]["train_samples_per_second"]
    print(
        f"Machine: {describe_machine()} (load average {load:.1f} at the end). Synthetic data, "
        f"{args.objects} objects x {args.views} views per category, {args.epochs} epochs, {args.precision}, batch "
        f"{args.batch_size} per rank, gloo.\n"
    )
    print("| ranks | global batch | train samples/s | vs 1 rank | fit s | val IoU@0.3 (last) | val IoU@0.3 (best) |")
    print("|---|---|---|---|---|---|---|")
    for ranks, m in rows:
        sps = m["train_samples_per_second"]
        print(
            f"| {ranks} | {ranks * args.batch_size} | {sps:.1f} | {sps / base:.2f}x | {m['fit_seconds']:.0f} "
            f"| {m['val/iou']:.3f} | {m.get('val/iou_best', float('nan')):.3f} |"
        )


if __name__ == "__main__":
    main()

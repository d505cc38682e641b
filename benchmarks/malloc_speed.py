"""CPU training with glibc's default malloc thresholds against ``r2n2.train.malloc`` (freed memory kept).

    python benchmarks/malloc_speed.py [--rounds 3] [--batch 16] [--steps 30] [overrides ...]

Runs ``r2n2-bench`` (bare loop and Trainer.fit, the default config) in a fresh process per row,
alternating ``R2N2_SYSTEM_MALLOC=1`` (glibc's defaults) and the default (thresholds raised), so a
noisy shared machine affects both alike. Each row: samples/s, the process's minor page faults,
kernel and user CPU seconds and peak resident memory (``/usr/bin/time``); then the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TIME_FORMAT = "faults=%R sys=%S user=%U rss_kb=%M"


def one(system: bool, batch: int, steps: int, overrides: list[str]) -> dict:
    env = {**os.environ, "R2N2_SYSTEM_MALLOC": "1" if system else "0"}
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            "/usr/bin/time",
            "-f",
            TIME_FORMAT,
            sys.executable,
            "-m",
            "r2n2.cli.bench",
            "--batch-sizes",
            str(batch),
            "--warmup",
            "5",
            "--steps",
            str(steps),
            "--out",
            out,
            *overrides,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"r2n2-bench failed:\n{proc.stderr[-3000:]}")
        row = json.loads((Path(out) / "bench.json").read_text())["rows"][0]
    stats = dict(re.findall(r"(\w+)=([\d.]+)", proc.stderr.strip().splitlines()[-1]))
    return {
        "malloc": "glibc defaults" if system else "r2n2.train.malloc",
        "bare": row["bare_loop"],
        "fit": row["trainer_fit"],
        "faults": int(stats["faults"]),
        "sys": float(stats["sys"]),
        "user": float(stats["user"]),
        "rss_mb": int(stats["rss_kb"]) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    for r in range(args.rounds):
        for system in (True, False):
            rows.append({"round": r + 1, **one(system, args.batch, args.steps, args.overrides)})
            print(json.dumps(rows[-1]), flush=True)
    from r2n2.utils.machine import describe_machine

    print(
        f"\nMachine: {describe_machine()}. r2n2-bench at batch {args.batch}, {args.steps} timed steps, "
        "training samples/s; faults, CPU seconds and peak memory of the whole bench process.\n"
    )
    print("| round | malloc | (a) bare loop | (b) Trainer.fit | minor page faults | kernel s | user s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(
            f"| {x['round']} | {x['malloc']} | {x['bare']:.1f} | {x['fit']:.1f} | {x['faults']:,} | {x['sys']:.1f} | "
            f"{x['user']:.1f} | {x['rss_mb']:,.0f} |"
        )
    for key in ("bare", "fit"):
        ratios = [b[key] / a[key] for a, b in zip(rows[::2], rows[1::2])]
        print(
            f"\n{key}: r2n2.train.malloc / glibc defaults, median of {len(ratios)} rounds: "
            f"{statistics.median(ratios):.2f} "
            f"({', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()

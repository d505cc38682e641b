"""The data path at ShapeNet's real size (issue 24, item 1): a first and a later training run on any
ShapeNet-layout root (a real download, or a stand-in of any scale made by hard links from a few real
objects), and the table of what they cost.

    python benchmarks/shapenet_scale.py --scale 0.1 --work /tmp/scale      # builds the stand-in too
    python benchmarks/shapenet_scale.py --root ~/ShapeNet --work /tmp/scale --eval

The stand-in is ``../shared/tools/shapenet_standin.py`` (the 3D-R2N2 layout, object counts per
category as the real release times --scale, a Pix2Vox-style ShapeNet.json split 70/10/20). Each run is
a child process building its job exactly as ``train.py`` does (``r2n2.train.run.build``), with a
callback that marks its first training step; a sampler thread reads its RssAnon (memory that cannot
be dropped) and RssFile (pages of files, the memory-mapped cache among them) every 50 ms, and the
peaks of both are reported. Prints a markdown table and writes scale.json in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT.parent / "shared" / "tools" / "shapenet_standin.py"


def _rss() -> dict[str, int]:
    """RssAnon and RssFile of this process, in bytes (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


class _Peaks(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}

    def run(self):
        while True:
            for k, v in _rss().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.05)


def child(args) -> None:
    """One run: build as train.py does, fit ``--steps`` steps, print a JSON line of its figures."""
    start = time.perf_counter()
    peaks = _Peaks()
    peaks.start()
    import lightning as L
    from hydra import compose, initialize_config_dir

    from r2n2.train.malloc import keep_freed_memory
    from r2n2.train.run import build

    imported = time.perf_counter()

    keep_freed_memory()
    overrides = [
        f"data.source.root={args.root}",
        f"paths.data_dir={args.work}",
        f"paths.output_dir={args.work}/run",
        "logger=none",
        "test=false",
        f"trainer.max_steps={args.steps}",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "module.viz_every_n_epochs=0",
        *args.overrides,
    ]
    if (Path(args.root) / "ShapeNet.json").exists():
        overrides.append("data.source.taxonomy=ShapeNet.json")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["data=shapenet", *overrides])
    marks: dict[str, float] = {}

    class Mark(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            marks.setdefault("fit_start", time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            if "first_step" not in marks:  # the rate counts the steps after the first
                marks["first_step"], marks["samples"] = now, 0
            else:
                marks["samples"] += len(batch["voxels"])
            marks["last_step"] = now

    t_build = time.perf_counter()
    datamodule, module, trainer, _ = build(cfg)
    t_model = time.perf_counter()
    trainer.callbacks.append(Mark())
    trainer.fit(module, datamodule=datamodule)
    end = time.perf_counter()
    timed = marks["last_step"] - marks["first_step"]
    print(
        "SCALE "
        + json.dumps(
            {
                "imports_s": imported - start,
                "build_s": t_model - t_build,
                "data_setup_s": marks["fit_start"] - t_model,
                "start_to_first_step_s": marks["first_step"] - start,
                "fit_start_to_first_step_s": marks["first_step"] - marks["fit_start"],
                "total_s": end - start,
                "train_samples_per_s": marks["samples"] / timed if timed > 0 else float("nan"),
                "peak_rss_anon": peaks.peak["RssAnon"],
                "peak_rss_file": peaks.peak["RssFile"],
                "splits": {k: len(v) for k, v in datamodule.datasets.items()},
            }
        ),
        flush=True,
    )


def _bytes(folder: Path, suffix: str | None = None) -> int:
    """Bytes of the files under ``folder`` (each hard link counted: a real download has no links)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and (suffix is None or p.suffix == suffix))


def _listing_seconds(root: Path) -> tuple[float, int]:
    from r2n2.data.sources import ShapeNetSource
    from r2n2.data.sources.base import ErrorPolicy

    taxonomy = "ShapeNet.json" if (root / "ShapeNet.json").exists() else None
    start = time.perf_counter()
    records = ShapeNetSource(os.fspath(root), taxonomy=taxonomy).records(ErrorPolicy("raise"))
    return time.perf_counter() - start, sum(len(r.images) for r in records)


def _run(args, label: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--root",
        str(args.root),
        "--work",
        str(args.work),
        "--steps",
        str(args.steps),
        *args.overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{label} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SCALE "))
    return {**json.loads(line[6:]), "wall_s": wall}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, help="a ShapeNet-layout root (ShapeNetRendering/, ShapeNetVox32/)")
    ap.add_argument("--scale", type=float, help="build a stand-in of this scale in --work/standin instead")
    ap.add_argument("--work", type=Path, required=True, help="the cache, runs and scale.json go here")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    ap.add_argument("--eval", action="store_true", help="also time r2n2-eval of the test split (hours on 2 cores)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both runs")
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.root is None:
        if args.scale is None:
            ap.error("give --root or --scale")
        args.root = args.work / "standin"
        if not (args.root / "ShapeNet.json").exists():
            subprocess.run(
                [sys.executable, str(STANDIN), "--out", str(args.root), "--scale", str(args.scale)], check=True
            )
    listing_s, images = _listing_seconds(args.root)
    png_bytes = _bytes(args.root / "ShapeNetRendering", ".png")
    first = _run(args, "first")
    cache_bytes = _bytes(args.work / "cache")
    later = _run(args, "later")
    result = {
        "root": str(args.root),
        "images": images,
        "listing_s": listing_s,
        "png_bytes": png_bytes,
        "cache_bytes": cache_bytes,
        "first": first,
        "later": later,
        "eval_s": None,
    }
    if args.eval:
        ckpt = args.work / "run" / "checkpoints" / "last.ckpt"
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "r2n2.cli.eval",
                f"ckpt={ckpt}",
                "progress=false",
                f"hydra.run.dir={args.work}/eval",
            ],
            cwd=ROOT,
            check=True,
        )
        result["eval_s"] = time.perf_counter() - start
    (args.work / "scale.json").write_text(json.dumps(result, indent=2))
    gb = 1e9
    pack_s = first["start_to_first_step_s"] - later["start_to_first_step_s"]  # what the first run's packing added
    rows = [
        ("images", f"{images:,}"),
        ("listing the files", f"{listing_s:.1f} s"),
        (
            "packing the cache (first run, beyond a later run's start)",
            f"{pack_s:.0f} s, ~{images / max(pack_s, 1e-9):,.0f} images/s",
        ),
        (
            "cache on disk / PNG bytes",
            f"{cache_bytes / gb:.2f} GB / {png_bytes / gb:.2f} GB ({cache_bytes / png_bytes:.1f}x)",
        ),
        (
            "peak RssAnon, first / later run",
            f"{first['peak_rss_anon'] / gb:.2f} / {later['peak_rss_anon'] / gb:.2f} GB",
        ),
        (
            "peak RssFile, first / later run",
            f"{first['peak_rss_file'] / gb:.2f} / {later['peak_rss_file'] / gb:.2f} GB",
        ),
        (
            "later run: process start to first training step",
            f"{later['start_to_first_step_s']:.1f} s "
            f"(imports {later['imports_s']:.1f} s, model and trainer {later['build_s']:.1f} s, data set-up "
            f"{later['data_setup_s']:.1f} s)",
        ),
        (f"training samples/s over {args.steps} steps, later run", f"{later['train_samples_per_s']:.1f}"),
        ("r2n2-eval of the test split", f"{result['eval_s']:.0f} s" if result["eval_s"] else "not run (--eval)"),
    ]
    print("\n| what | measured |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print(f"\nsplits {later['splits']}; scale.json in {args.work}")


if __name__ == "__main__":
    main()

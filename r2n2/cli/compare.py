"""``r2n2-compare``: the report's question in one table. Each model is trained on the same data for
the same wall-clock budget (3D-R2N2's recipe: a random number of distinct views 1..5 per batch),
then measured side by side: parameters, training GFLOP per sample (torch.utils.flop_counter),
training samples/s and inference ms/sample at the same batch and precision, peak memory, and test
IoU@0.3 at 1 and 3 views.

    r2n2-compare                                   # all five models, 4 minutes each, CPU
    r2n2-compare --models seed_gru r2n2_gru --minutes 10 --out docs/compare
    r2n2-compare --speed-only --speed-batches 8 256      # speed columns only (e.g. on a GPU)

Writes compare.json and compare.md into --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from r2n2.utils.atomic import atomic_write
from r2n2.utils.machine import describe_machine

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("seed_gru", "seed_lstm", "r2n2_gru", "r2n2_res_gru", "r2n2_lstm")


# The report's question is what ITS simplification costs: the seed models keep the report's decoder
# (linear -> 32^3 -> one Conv3d), not train.py's default up-convolution decoder, and every model the
# report's and 3D-R2N2's loss (BCE). An override on the command line still wins.
REPORT_DESIGN = {"seed": ["model.decoder.name=linear_conv3d"], "all": ["module.loss.soft_iou_weight=0.0"]}


def _compose(model: str, overrides: list[str]):
    """The train.py config for ``model`` (with the report's design: REPORT_DESIGN) with ``overrides``."""
    from hydra import compose, initialize_config_dir

    design = REPORT_DESIGN["all"] + (REPORT_DESIGN["seed"] if model.startswith("seed_") else [])
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", [f"model={model}", *design, *overrides])


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """Lightning's precision name -> the autocast dtype (None for fp32)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def measure(model: str, batch: int, precision: str, overrides: list[str], steps: int = 5) -> dict:
    """Speed, FLOPs and memory of one model on random input (1 view), in this process."""
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    from r2n2.models import count_parameters
    from r2n2.train.network import build_network

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _autocast_dtype(precision)
    cfg = _compose(model, [*overrides, "paths.output_dir=."])
    net = build_network(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(batch, 1, 3, 127, 127, device=device)
    y = (torch.rand(batch, 32, 32, 32, device=device) > 0.88).float()

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return net(x)

    def backward():
        torch.nn.functional.binary_cross_entropy_with_logits(forward().float(), y).backward()

    def train_step():
        opt.zero_grad(set_to_none=True)
        backward()
        opt.step()

    with FlopCounterMode(display=False) as flops:
        backward()
    opt.zero_grad(set_to_none=True)

    def timed(fn, n):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_s = timed(train_step, steps)
    net.eval()
    with torch.no_grad():
        infer_s = timed(forward, steps)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "parameters": count_parameters(net),
        "train_gflop_per_sample": flops.get_total_flops() / batch / 1e9,
        "train_samples_per_s": batch / train_s,
        "inference_ms_per_sample": 1000 * infer_s / batch,
        "peak_memory_mib": peak / 2**20,
        "memory_kind": "GPU max allocated" if device.type == "cuda" else "process peak RSS",
        "device": describe_machine(),
        "batch": batch,
        "precision": precision,
    }


def train_for(
    model: str, minutes: float, batch: int, precision: str, test_samples: int, run_dir: Path, overrides: list[str]
) -> tuple:
    """Train ``model`` through the same builder as train.py for a wall-clock budget. Returns the
    trained module, its data config and the number of training samples it saw."""
    from omegaconf import OmegaConf

    from r2n2.train.run import build

    h, rem = divmod(int(minutes * 60), 3600)
    cfg = _compose(
        model,
        [
            "data.views_per_sample=[1,5]",
            f"data.batch_size={batch}",
            f"data.splits.test={test_samples}",
            f"trainer.precision={precision}",
            "trainer.max_epochs=-1",
            f"trainer.max_time=00:{h:02d}:{rem // 60:02d}:{rem % 60:02d}",
            "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "callbacks.model_checkpoint=null",
            "callbacks.last_checkpoint=null",
            "scheduler=none",
            f"paths.output_dir={run_dir}",
            *overrides,
        ],
    )
    datamodule, module, trainer, throughput = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    return module, OmegaConf.to_container(cfg.data, resolve=True), throughput.samples


def test_iou(module, data_cfg: dict, views: list[int], precision: str) -> tuple[dict, float]:
    """Test IoU@0.3 (mean over samples) at each fixed view count, and the global mean-shape baseline's.
    Scored as r2n2-eval's protocol=ours (r2n2/evaluation/scoring.py: each sample's own view first, then v - 1
    other views of its object)."""
    import hydra

    from r2n2.evaluation import scoring as S
    from r2n2.evaluation.metrics import THRESHOLD
    from r2n2.train.run import mean_shape_baseline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = hydra.utils.instantiate({**data_cfg, "eval_views": max(views), "num_workers": 0, "persistent_workers": False})
    dm.setup()
    samples = S.all_samples(dm.datasets["test"], max(views))
    results = S.score_network(
        module.net, samples, views, (THRESHOLD,), {}, None, device, _autocast_dtype(precision), progress=False
    )
    out = {str(v): float(results[v].iou_at(THRESHOLD).mean()) for v in views}
    # the baseline sees no image, so the view count does not change it
    return out, mean_shape_baseline(dm)["baseline/global_mean_shape_test_iou"]


def markdown(rows: dict, meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}. Training budget: {meta['minutes']:g} min wall clock per model on "
        f"the built-in synthetic dataset (random 1..5 views per batch, batch {meta['batch']}, "
        f"{meta['precision']}, Adam 1e-3); test IoU@0.3 on {meta['test_samples']} test samples, final "
        f"weights. Speed: random input, 1 view, batch {meta['batch']}, {meta['precision']}.",
        "",
        "| model | parameters | train GFLOP/sample | train samples/s | inference ms/sample | peak memory (MiB) "
        "| training samples seen | test IoU@0.3, 1 view | test IoU@0.3, 3 views |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        iou = r.get("test_iou", {})
        lines.append(
            f"| {name} | {r['parameters']:,} | {r['train_gflop_per_sample']:.1f} | "
            f"{r['train_samples_per_s']:.1f} | {r['inference_ms_per_sample']:.1f} | "
            f"{r['peak_memory_mib']:,.0f} | {r.get('samples_seen', '-')} | "
            f"{iou.get('1', float('nan')):.3f} | {iou.get('3', float('nan')):.3f} |"
        )
    base = meta.get("baseline")
    if base is not None:
        lines += ["", f"Global mean-shape baseline on the same test samples: IoU@0.3 {base:.3f}."]
    return "\n".join(lines) + "\n"


def speed_markdown(rows: list[dict]) -> str:
    """The speed columns alone, one row per (model, batch): for ``--speed-only`` runs."""
    lines = [
        f"Machine: {rows[0]['device']}. Random input, 1 view, {rows[0]['precision']}; memory: "
        f"{rows[0]['memory_kind']}.",
        "",
        "| model | batch | parameters | train GFLOP/sample | train samples/s | inference ms/sample "
        "| peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['parameters']:,} | {r['train_gflop_per_sample']:.1f} | "
            f"{r['train_samples_per_s']:.1f} | {r['inference_ms_per_sample']:.2f} | {r['peak_memory_mib']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def _measure_in_subprocess(model: str, batch: int, precision: str, overrides: list[str]) -> dict:
    """Measure in a fresh process, so that peak memory is this model's alone."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "r2n2.cli.compare",
            "--measure",
            model,
            "--batch-size",
            str(batch),
            "--precision",
            precision,
            *overrides,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"r2n2-compare: measuring {model} at batch {batch} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write(out: Path, payload: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "compare.json", "w") as f:
        json.dump(payload, f, indent=2)
    with atomic_write(out / "compare.md", "w") as f:
        f.write(table)
    print("\n" + table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="r2n2-compare", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall-clock budget per model")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "32", "bf16-mixed", "16-mixed"],
        help="auto: as train.py's trainer.precision=auto (bf16-mixed where the device computes bf16 "
        "natively, else 16-mixed on a GPU and 32 on a CPU)",
    )
    ap.add_argument("--test-samples", type=int, default=300)
    ap.add_argument("--out", default="outputs/compare")
    ap.add_argument("--speed-only", action="store_true", help="skip training and test IoU; measure speed only")
    ap.add_argument("--speed-batches", type=int, nargs="+", help="batch sizes for --speed-only (default: --batch-size)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one model in a fresh process
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every training run")
    args = ap.parse_args(argv)
    if args.precision == "auto":
        from r2n2.train.accelerator import choose

        chosen = choose(cuda=torch.cuda.is_available())["precision"]
        args.precision = "32" if chosen == "32-true" else chosen
    if args.measure:
        print(json.dumps(measure(args.measure, args.batch_size, args.precision, args.overrides)))
        return
    out = Path(args.out)
    if args.speed_only:
        rows = [
            {"model": name, **_measure_in_subprocess(name, b, args.precision, args.overrides)}
            for name in args.models
            for b in (args.speed_batches or [args.batch_size])
        ]
        _write(
            out,
            {"meta": {"machine": describe_machine(), "precision": args.precision}, "speed": rows},
            speed_markdown(rows),
        )
        return
    rows, baseline = {}, None
    for name in args.models:
        print(f"+ {name}: training for {args.minutes:g} min", flush=True)
        module, data_cfg, seen = train_for(
            name, args.minutes, args.batch_size, args.precision, args.test_samples, out / "runs" / name, args.overrides
        )
        speed = subprocess.run(
            [
                sys.executable,
                "-m",
                "r2n2.cli.compare",
                "--measure",
                name,
                "--batch-size",
                str(args.batch_size),
                "--precision",
                args.precision,
                *args.overrides,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(speed.stdout.strip().splitlines()[-1])
        row["samples_seen"] = seen
        row["test_iou"], baseline = test_iou(module, data_cfg, [1, 3], args.precision)
        rows[name] = row
        print(
            f"  {name}: {row['parameters']:,} parameters, {seen} samples seen, test IoU {row['test_iou']}", flush=True
        )
    meta = {
        "machine": describe_machine(),
        "minutes": args.minutes,
        "batch": args.batch_size,
        "precision": args.precision,
        "test_samples": args.test_samples,
        "baseline": baseline,
    }
    _write(out, {"meta": meta, "models": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()

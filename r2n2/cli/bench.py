"""``r2n2-bench``: how close training gets to the speed of the network itself, in one process.

For each batch size it measures steady-state training samples/s (after warm-up, synchronised with
the device) of

    (a) a bare PyTorch loop over the same network, precision, memory format and compilation, on one
        batch already on the device (forward, BCE, backward, gradient clipping, Adam; with
        ``module.cuda_graph=true`` the same whole step as the module's, captured on CUDA);
    (b) the real path: ``Trainer.fit`` with the real DataModule, cache and worker processes, built by
        the same ``r2n2.train.run.build`` as ``train.py`` (validation and checkpoints off);
    (c) the DataLoader alone (its batches as they reach the device: uint8, pinned on CUDA);

prints a table with the ratio b/a and the loop's own cost per step, (b) - (a) in ms, writes
bench.json, and names the device.

    r2n2-bench                                           # the default model and batch, GPU if present
    r2n2-bench --batch-sizes 8 256 model=r2n2_res_gru    # any model=, any batch sizes
    r2n2-bench --batch-sizes 256 module.compile=true module.channels_last=true
    r2n2-bench --probe --batch-sizes 8 --warmup 20 --steps 200 --rounds 5   # the loop's own cost
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

from r2n2.train.malloc import keep_freed_memory
from r2n2.utils.atomic import atomic_write
from r2n2.utils.machine import describe_machine

ROOT = Path(__file__).resolve().parents[2]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock:
    """Lightning callback: wall time between the end of step ``warmup`` and of step ``warmup + steps``,
    synchronised with the device at both ends only."""

    def __init__(self, warmup: int, steps: int):
        import lightning as L

        class Clock(L.Callback):
            def on_train_batch_end(cb, trainer, pl_module, outputs, batch, batch_idx):
                done = trainer.global_step
                if done in (warmup, warmup + steps):
                    _sync(pl_module.device)
                    self.marks.append((time.perf_counter(), self.samples))
                self.samples += len(batch["voxels"])

        self.callback, self.marks, self.samples = Clock(), [], 0

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.marks[:2]
        return (n1 - n0) / (t1 - t0)


def bare_loop(cfg, batch: dict, device: torch.device, precision: str, warmup: int, steps: int) -> float:
    """(a): samples/s of forward + the run's loss + backward + clip + Adam on one batch already on ``device``."""
    import hydra

    from r2n2.data.transforms import to_images
    from r2n2.train.losses import voxel_loss
    from r2n2.train.network import build_network, compile_network, use_channels_last

    net = build_network(_plain(cfg.model)).to(device).train()
    module_cfg = _plain(cfg.get("module"))
    use_channels_last(net, module_cfg.get("channels_last", "auto"), device.type == "cuda")
    compile_network(net, module_cfg.get("compile", False))
    loss_kwargs = module_cfg.get("loss") or {}  # the run's loss (BCE + soft IoU by default)
    optimizer = hydra.utils.instantiate(_plain(cfg.optimizer))(params=net.parameters())
    images = to_images(batch["rgba"].to(device))
    target = batch["voxels"].to(device).float()
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    clip = cfg.trainer.get("gradient_clip_val")

    if module_cfg.get("cuda_graph"):  # the module's own whole step, captured on CUDA (r2n2/train/step.py)
        from r2n2.train.step import WholeStep

        whole = WholeStep(
            net, functools.partial(voxel_loss, **loss_kwargs), optimizer, clip, capture=device.type == "cuda"
        )

        def step():
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                whole(images, target)
    else:
        step = _eager_step(net, images, target, loss_kwargs, optimizer, dtype, clip, device)
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * len(target) / (time.perf_counter() - start)


def _eager_step(net, images, target, loss_kwargs, optimizer, dtype, clip, device):
    """A training step as Lightning's automatic optimisation does it, fp16's gradient scaler included."""
    from r2n2.train.losses import voxel_loss

    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = net(images)
        loss = voxel_loss(logits, target, **loss_kwargs)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()

    return step


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}


def real_path(cfg, warmup: int, steps: int) -> tuple[float, str, str, str]:
    """(b): samples/s of ``Trainer.fit`` between the end of step ``warmup`` and ``warmup + steps``.
    Returns (rate, accelerator, precision, input path) as the trainer resolved them."""
    from r2n2.train.run import build

    datamodule, module, trainer, _ = build(cfg)
    clock = _StepClock(warmup, steps)
    trainer.callbacks.append(clock.callback)
    trainer.fit(module, datamodule=datamodule)
    path = "device" if datamodule.input_path().on_device else f"DataLoader ({cfg.data.num_workers} workers)"
    return (
        clock.rate(),
        type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        str(trainer.precision),
        path,
    )


def loader_only(datamodule, warmup: int, steps: int) -> float:
    """(c): samples/s of iterating the training input (the DataLoader, or the batches gathered on
    the device; epochs chained as needed)."""

    def batches():
        while True:
            yield from datamodule.train_dataloader()

    it = batches()
    for _ in range(warmup):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        n += len(next(it)["voxels"])
    return n / (time.perf_counter() - start)


def measure(overrides: list[str], batch_size: int, warmup: int, steps: int, out: Path, rounds: int = 1) -> dict:
    """One row of the table: (a), (b), (c) at ``batch_size`` for the config ``overrides``; with
    ``rounds`` > 1, (b) and (a) alternate that many times and the row holds their medians (each
    round's pair in ``rounds``), so a slow spell of the machine falls on both."""
    import hydra

    from r2n2.train.accelerator import choose

    run = [
        "logger=none",
        "test=false",
        "trainer.max_epochs=-1",
        f"trainer.max_steps={warmup + steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "module.viz_every_n_epochs=0",
        f"data.batch_size={batch_size}",
        f"paths.output_dir={out / 'run'}",
    ]
    cfg = _compose([*run, *overrides])
    chosen = choose(cfg.trainer.accelerator, cfg.trainer.precision, cfg.trainer.get("benchmark", "auto"))
    device = torch.device("cuda" if chosen["accelerator"] in ("gpu", "cuda") else "cpu")
    pairs = []
    for _ in range(max(1, rounds)):
        rate_b, accelerator, precision, input_path = real_path(cfg, warmup, steps)
        if not pairs:  # the DataLoader alone, and the bare loop's one batch, once
            torch.backends.cudnn.benchmark = bool(chosen["benchmark"])
            datamodule = hydra.utils.instantiate(cfg.data)
            datamodule.prepare_data()
            datamodule.setup()
            datamodule.pin_memory = device.type == "cuda"
            rate_c = loader_only(datamodule, warmup, steps)
            batch = next(iter(datamodule.train_dataloader()))
        pairs.append((bare_loop(cfg, batch, device, chosen["precision"], warmup, steps), rate_b))
    rate_a = statistics.median(a for a, _ in pairs)
    rate_b = statistics.median(b for _, b in pairs)
    module = _plain(cfg.get("module"))
    return {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "batch": batch_size,
        "device": describe_machine(),
        "accelerator": accelerator,
        "precision": precision,
        "views": str(cfg.data.views_per_sample),
        "compile": module.get("compile", False),
        "channels_last": module.get("channels_last", "auto"),
        "num_workers": cfg.data.num_workers,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "bare_loop": rate_a,
        "trainer_fit": rate_b,
        "dataloader": rate_c,
        "ratio": rate_b / rate_a,
        "loop_ms_per_step": statistics.median(step_cost_ms(a, b, batch_size) for a, b in pairs),
        "rounds": [
            {"bare_loop": a, "trainer_fit": b, "loop_ms_per_step": step_cost_ms(a, b, batch_size)} for a, b in pairs
        ],
        "input_path": input_path,
        "overrides": overrides,
    }


def step_cost_ms(bare: float, fit: float, batch: int) -> float:
    """What Trainer.fit costs per step beyond the bare loop: batch / fit - batch / bare, in ms."""
    return 1000 * (batch / fit - batch / bare)


def table(rows: list[dict]) -> str:
    lines = [
        f"Machine: {rows[0]['device']}; torch {torch.__version__}. Training samples/s after warm-up, "
        "synchronised. (a) bare PyTorch loop on one batch on the device, (b) Trainer.fit with the real "
        "DataModule and cache, (c) the training input alone; (b) - (a): the loop's own cost per step"
        + (f"; medians of {len(rows[0]['rounds'])} alternating rounds" if len(rows[0]["rounds"]) > 1 else "")
        + ".",
        "",
        "| model | batch | precision | compile | channels_last | input | (a) bare loop | (b) Trainer.fit "
        "| (c) input | b/a | (b) - (a) per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['precision']} | {r['compile']} | {r['channels_last']} | "
            f"{r['input_path']} | {r['bare_loop']:,.1f} | {r['trainer_fit']:,.1f} | {r['dataloader']:,.0f} | "
            f"{r['ratio']:.2f} | {r['loop_ms_per_step']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="r2n2-bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="default: data.batch_size of the config")
    ap.add_argument("--warmup", type=int, default=5, help="steps before timing starts")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--out", default="outputs/bench", help="folder for bench.json")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="(b) and (a) alternated this many times per row; the row gives their medians",
    )
    ap.add_argument(
        "--probe",
        action="store_true",
        help="the launch-bound probe network (model=probe): measures the loop's own per-step cost",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of train.py's config (model=..., data=...)")
    args = ap.parse_args(argv)
    if args.probe:
        args.overrides = ["model=probe", *args.overrides]
    keep_freed_memory()  # as train.py does (r2n2.train.extras.prepare_run)
    sizes = args.batch_sizes or [int(_compose(args.overrides).data.batch_size)]
    rows = []
    for b in sizes:
        rows.append(measure(args.overrides, b, args.warmup, args.steps, Path(args.out), args.rounds))
        print(
            f"[r2n2-bench] batch {b}: bare {rows[-1]['bare_loop']:.1f}, Trainer.fit {rows[-1]['trainer_fit']:.1f}, "
            f"DataLoader {rows[-1]['dataloader']:.0f} samples/s",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "bench.json", "w") as f:
        json.dump({"machine": describe_machine(), "torch": torch.__version__, "rows": rows}, f, indent=2)
    print("\n" + table(rows))
    print(f"[r2n2-bench] wrote {out / 'bench.json'}")


if __name__ == "__main__":
    main()

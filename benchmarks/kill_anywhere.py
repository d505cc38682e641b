"""Kill ``python train.py`` with SIGKILL at chosen moments, continue it as a user would, and check that
it ends identical (final weights and metrics) to an uninterrupted run.

    python benchmarks/kill_anywhere.py [--seed 0] [--out /tmp/kill-anywhere]

The 11 moments are drawn (seeded) from: the synthetic set being generated (after a random number of
its files), the cache being packed, a random training batch of epoch 0 or 1, a random validation
batch, the k-th checkpoint write (the hidden temporary file of ``best.ckpt``/``last.ckpt`` exists),
and a batch of the final test (after the last checkpoint).
The harness watches the run from outside (its files and a one-line phase file that ``PhaseBeacon``,
a callback added to every run, rewrites at each batch) and SIGKILLs the train.py process the moment
it sees the phase. Then: ``resume=<run>`` if the run has a ``checkpoints/last.ckpt``, else the same
command again. Runs use the default data-loading settings (2 worker processes, persistent) on a tiny
synthetic set (3 categories x 4 objects x 3 views), 2 epochs.

Prints one row per kill: where it hit, what was on disk, how it was continued, and whether weights
and metrics equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from r2n2.train.run import TIMING_KEYS  # differ between any two runs

ROOT = Path(__file__).resolve().parents[1]
PHASE_FILE = "phase"


class PhaseBeacon(L.Callback):
    """Rewrites ``<run>/phase`` with ``train <epoch> <batch>`` / ``val <epoch> <batch>`` / ``test 0 <batch>``
    as each batch starts (sanity-check validation is ``sanity``), so a watcher knows where the run is."""

    def _say(self, trainer, text: str) -> None:
        if trainer.global_rank == 0:
            with open(Path(trainer.default_root_dir) / PHASE_FILE, "w") as f:
                f.write(text)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._say(trainer, f"train {trainer.current_epoch} {batch_idx}")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._say(trainer, "sanity" if trainer.sanity_checking else f"val {trainer.current_epoch} {batch_idx}")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._say(trainer, f"test 0 {batch_idx}")


def overrides(data_dir: Path, epochs: int = 2, loader: tuple[str, ...] = ()) -> list[str]:
    """A tiny complete run (synthetic data generated into ``data_dir``) with the phase beacon."""
    return [
        f"paths.data_dir={data_dir}",
        "data.source.objects_per_category=4",
        "data.source.views=3",
        "data.source.categories=[chair,table,airplane]",
        "data.source.workers=1",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "module.viz_samples=2",
        "+callbacks.beacon._target_=kill_anywhere.PhaseBeacon",
        *loader,
    ]


def _command(args: list[str], hydra_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={hydra_dir}"]


def _env() -> dict:
    path = os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def run(args: list[str], hydra_dir: Path, log: Path) -> int:
    with open(log, "a") as f:
        return subprocess.run(
            _command(args, hydra_dir), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=1800
        ).returncode


@dataclass
class Moment:
    """Where to kill: ``kind`` in synth / pack / train / val / ckpt / test and a number (file count, epoch
    and batch, which checkpoint write, or the test batch)."""

    kind: str
    epoch: int = 0
    index: int = 0

    def __str__(self) -> str:
        return {
            "synth": f"synthetic set being generated (after {self.index} files)",
            "pack": "cache being packed",
            "train": f"training, epoch {self.epoch}, batch {self.index}",
            "val": f"validation, epoch {self.epoch}, batch {self.index}",
            "ckpt": f"checkpoint write #{self.index}",
            "test": f"final test, batch {self.index}",
        }[self.kind]

    def hit(self, run_dir: Path, data_dir: Path, seen: set) -> bool:
        if self.kind == "synth":
            return any(
                sum(1 for _ in t.rglob("*.png")) >= self.index for t in (data_dir / "synthetic").glob(".*.tmp-*")
            )
        if self.kind == "pack":
            return any(True for _ in (data_dir / "cache").glob(".*.tmp/images.z"))
        if self.kind == "ckpt":
            seen.update(p.name for p in (run_dir / "checkpoints").glob(".*.tmp"))
            return len(seen) >= self.index
        try:
            return (run_dir / PHASE_FILE).read_text() == f"{self.kind} {self.epoch} {self.index}"
        except OSError:
            return False


def kill_at(moment: Moment, args: list[str], run_dir: Path, data_dir: Path, log: Path) -> str:
    """Start the run, SIGKILL it when ``moment`` is seen; returns what happened ("killed" or why not)."""
    with open(log, "a") as f:
        proc = subprocess.Popen(
            _command(args, run_dir), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    seen: set = set()
    try:
        while proc.poll() is None:
            if moment.hit(run_dir, data_dir, seen):
                os.kill(proc.pid, signal.SIGKILL)  # the train.py process itself, mid-whatever
                proc.wait()
                return "killed"
            time.sleep(0.002)
        return f"not hit: the run ended first (exit {proc.returncode})"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its orphaned workers, if any
        except ProcessLookupError:
            pass


def final_state(run_dir: Path) -> tuple[dict, dict]:
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return ckpt["state_dict"], {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def same(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[bool, bool]:
    import torch

    weights = a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    return weights, a[1] == b[1]


def trial(moment: Moment, args: list[str], run_dir: Path, data_dir: Path, reference) -> dict:
    """Kill at ``moment``, continue, compare with ``reference`` (final_state of the uninterrupted run)."""
    log = run_dir.with_suffix(".log")
    what = kill_at(moment, args, run_dir, data_dir, log)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    on_disk = "last.ckpt" if ckpt.is_file() else "no checkpoint"
    if ckpt.is_file():
        how, rc = "resume=<run>", run([*args, f"resume={run_dir}"], run_dir.with_name(run_dir.name + "-resume"), log)
    else:
        how, rc = "same command again", run(args, run_dir, log)
    row = {"moment": str(moment), "kill": what, "on disk": on_disk, "continued with": how, "exit": rc}
    if rc == 0:
        row["weights equal"], row["metrics equal"] = same(final_state(run_dir), reference)
    else:
        row["weights equal"] = row["metrics equal"] = False
    return row


def moments(seed: int) -> list[Moment]:
    """11 moments, one to three per phase, the file/batch numbers drawn from ``seed`` (epochs have 4
    training and 3 validation batches, the test 3; checkpoint writes 1-2 are epoch 0's best and last, 3
    is epoch 1's first)."""
    rng = random.Random(seed)
    return [
        Moment("synth", index=rng.randint(1, 30)),
        Moment("pack"),
        Moment("train", 0, rng.randint(0, 2)),
        Moment("train", 1, rng.randint(0, 2)),
        Moment("val", 0, rng.randint(0, 1)),
        Moment("val", 1, rng.randint(0, 1)),
        Moment("ckpt", index=1),
        Moment("ckpt", index=2),
        Moment("ckpt", index=3),
        Moment("train", 0, rng.randint(2, 3)),
        Moment("test", 0, rng.randint(0, 2)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill-anywhere"))
    parser.add_argument("--jobs", type=int, default=1, help="kills tried at the same time (each is its own run)")
    parser.add_argument("--only", type=int, nargs="*", help="try only these kills (1-based rows of the table)")
    opts = parser.parse_args()
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = out / "data-shared"
    start = time.perf_counter()
    if (out / "uninterrupted" / "metrics.json").is_file():  # a finished reference of an earlier call
        print(f"reusing the uninterrupted run in {out / 'uninterrupted'}", flush=True)
    else:  # (it also generates the synthetic set and the caches in data-shared)
        assert run(overrides(shared), out / "uninterrupted", out / "uninterrupted.log") == 0, "uninterrupted run failed"
    reference = final_state(out / "uninterrupted")

    def one(i: int, m: Moment) -> dict:
        fresh = m.kind in ("synth", "pack")  # these need a data folder without the set / the cache
        data_dir = out / f"data-{i}" if fresh else shared
        row = trial(m, overrides(data_dir), out / f"kill-{i}", data_dir, reference)
        print(json.dumps(row), flush=True)
        return row

    chosen = [(i, m) for i, m in enumerate(moments(opts.seed)) if not opts.only or i + 1 in opts.only]
    with ThreadPoolExecutor(opts.jobs) as pool:
        rows = list(pool.map(one, *zip(*chosen)))
    from r2n2.utils.machine import describe_machine

    print(f"\nMachine: {describe_machine()}. {len(rows)} kills, {time.perf_counter() - start:.0f} s in all.\n")
    cols = ["moment", "kill", "on disk", "continued with", "exit", "weights equal", "metrics equal"]
    print("| # | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for (i, _), r in zip(chosen, rows):
        print(f"| {i + 1} | " + " | ".join(str(r[c]) for c in cols) + " |")
    ok = sum(r["weights equal"] and r["metrics equal"] for r in rows)
    print(f"\n{ok}/{len(rows)} finished identical to the uninterrupted run.")
    sys.exit(0 if ok == len(rows) else 1)


if __name__ == "__main__":
    main()

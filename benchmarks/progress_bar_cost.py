"""What the progress bar costs per training step, where a person watches a terminal.

On a fast GPU a step of this model takes milliseconds and the Python loop around it is the limit
(docs/performance.md), so anything the bar does per step, or in a thread that takes the GIL, shows.
This script times Lightning's ``Trainer.fit`` over a tiny module (a step of ~1 ms on a CPU, the size
of a launch-bound GPU step) with each bar, in a child process whose stdout is a pseudo-terminal (so
Rich draws its live display as at a console; the output is read and dropped), rows alternating over
``--rounds``:

    python benchmarks/progress_bar_cost.py [--rounds 3] [--steps 3000]

Rows: no bar; Lightning's TQDM bar (what train.py uses when stdout is a file); Rich at Lightning's
default refresh rate (100 redraws/s); Rich as ``r2n2.train.run_callbacks.progress_bar`` builds it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time, torch, lightning.pytorch as L
from lightning.pytorch.callbacks import RichProgressBar
from r2n2.train.run_callbacks import progress_bar

kind, steps = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)  # a bar with a metric, as train.py's
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(steps, 4)), batch_size=1)

bar = {"none": None, "tqdm": progress_bar(rich=False), "rich-100": RichProgressBar(),
       "r2n2-rich": progress_bar(rich=True)}[kind]
trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                    enable_progress_bar=bar is not None, callbacks=[bar] if bar else [], accelerator="cpu")
start = time.perf_counter()
trainer.fit(Tiny())
print(f"RESULT {(time.perf_counter() - start) / steps * 1e3:.4f}", file=sys.stderr)
"""

KINDS = ["none", "tqdm", "rich-100", "r2n2-rich"]


def time_in_terminal(kind: str, steps: int) -> float:
    """ms per step of one fit, the child's stdout a pseudo-terminal (drained here)."""
    master, slave = os.openpty()
    drain = threading.Thread(target=lambda: _drain(master), daemon=True)
    drain.start()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "120",
        "TERM": "xterm-256color",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(steps)], stdout=slave, stderr=subprocess.PIPE, text=True, env=env
    )
    os.close(slave)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind}: the child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return float(lines[-1].split()[1])


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # the terminal closed
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        for kind in KINDS:
            times[kind].append(time_in_terminal(kind, args.steps))
            print(f"round {r + 1} {kind}: {times[kind][-1]:.3f} ms/step", flush=True)
    base = times["none"]
    print("\n| progress bar | ms per step, each round | added ms per step, each round (vs no bar, same round) |")
    print("|---|---|---|")
    for kind in KINDS:
        print(
            f"| {kind} | {', '.join(f'{t:.3f}' for t in times[kind])} | "
            f"{', '.join(f'{t - b:+.3f}' for t, b in zip(times[kind], base))} |"
        )


if __name__ == "__main__":
    main()

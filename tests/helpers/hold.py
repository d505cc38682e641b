"""A callback that holds a real training run in its final test, for the SLURM requeue test: added with
``+callbacks.hold._target_=hold.HoldAtTest +callbacks.hold.marker=<file> +callbacks.hold.restart=<n>``
(tests/helpers on PYTHONPATH)."""

import os
import time
from pathlib import Path

import lightning as L


class HoldAtTest(L.Callback):
    """When the test starts in SLURM restart ``restart`` of the job, write ``marker`` and wait (up to
    ``seconds``) so the test can requeue the job while it tests, after its last checkpoint."""

    def __init__(self, marker: str, restart: int, seconds: float = 600):
        self.marker, self.restart, self.seconds = Path(marker), restart, seconds

    def on_test_start(self, trainer, pl_module) -> None:
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) != self.restart:
            return
        if trainer.is_global_zero:
            self.marker.write_text(f"holding in test, restart {self.restart}\n")
        time.sleep(self.seconds)

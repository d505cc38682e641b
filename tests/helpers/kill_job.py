"""A callback that kills its own process in one job of a Hydra multirun, once, for the tests of
resuming a killed search: ``+callbacks.kill._target_=kill_job.KillJobOnce +callbacks.kill.job=1
+callbacks.kill.marker=<file>`` (tests/helpers on PYTHONPATH). The marker file makes the second
run of the same command go through."""

import os
import signal
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig


class KillJobOnce(L.Callback):
    """SIGKILL the process when job ``job`` of the multirun starts training, unless ``marker``
    exists (it is created just before): a hard crash of the whole sweep, nothing cleans up."""

    def __init__(self, job: int, marker: str):
        self.job, self.marker = job, Path(marker)

    def on_train_start(self, trainer, pl_module) -> None:
        if HydraConfig.get().job.num == self.job and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

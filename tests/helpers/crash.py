"""A callback that kills its own process, for the resume test: added to a real training run with
``+callbacks.crash._target_=crash.CrashAtEpoch`` (tests/helpers on PYTHONPATH)."""

import os
import signal

import lightning as L


class CrashAtEpoch(L.Callback):
    """SIGKILL the process when training epoch ``epoch`` starts (its predecessor's checkpoint is
    written by then): a hard crash, nothing gets to clean up."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # only in the run started fresh: resume= restores the run's config, this callback included,
        # and the resumed run must go on
        if trainer.current_epoch == self.epoch and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)

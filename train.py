"""Train a voxel reconstruction model: ``python train.py [overrides]`` (Hydra; see README.md).

Returns the best validation IoU@0.3 so Hydra sweepers can optimise it. Bad input that the data
layer, resume or checkpoint loading recognise ends in one line, ``train.py: error: <path>: <what>``,
and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

import errno
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

USAGE_ERROR = 2  # exit status for bad input, as argparse uses
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over the file-size limit
# conf/hydra/launcher/submitit_{slurm,local}.yaml share the submitit plugin's config names on purpose
# (Hydra merges them over the plugin's schema) and Hydra would say so in a warning on every sweep
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore")


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input, or None for anything else (a bug)."""
    from r2n2.data.errors import DataError
    from r2n2.train.checkpoint import CheckpointError
    from r2n2.train.resume import ResumeError

    if isinstance(e, (DataError, CheckpointError, ResumeError)):
        return str(e)
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        return (
            f"{e.filename or 'a file being written'}: {e.strerror}: free some space, then run the same command "
            "again (resume=<run folder> continues from its last complete checkpoint)"
        )
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from r2n2.train.distributed import close_process_group
    from r2n2.train.run import MONITOR, train

    try:
        metrics = train(cfg)
    except Exception as e:
        close_process_group()  # a DDP rank's gloo group, before the interpreter's exit can abort the process
        message = user_error(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"train.py: error: {message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    # every rank got here: in a multirun the next job may start a new group in this process
    close_process_group(wait_for_all=HydraConfig.get().mode == RunMode.MULTIRUN)
    return metrics.get(MONITOR, metrics.get("val/iou"))


if __name__ == "__main__":
    main()

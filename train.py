"""Train a voxel reconstruction model: ``python train.py [overrides]`` (Hydra; see README.md).

Returns the best validation IoU@0.3 so Hydra sweepers can optimise it.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from r2n2.training import MONITOR, train

    metrics = train(cfg)
    return metrics.get(MONITOR, metrics.get("val/iou"))


if __name__ == "__main__":
    main()

"""The recipe's training options (docs/ablation.md, section 4): the BCE + soft-IoU loss
(r2n2/train/losses.py) and the one-cycle / warm-up cosine schedules (conf/scheduler/onecycle.yaml,
cosine.yaml), on real tensors and in a real tiny ``train.py`` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_train, tiny
from hydra import compose, initialize_config_dir

from r2n2.train.losses import soft_iou, voxel_loss


def _grid(seed: int, p: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 32, 32, 32, generator=g) < p).float()  # (B, 32, 32, 32) {0, 1}


def test_soft_iou_of_confident_logits_is_the_iou():
    target, pred = _grid(0), _grid(1)
    logits = (pred * 2 - 1) * 30  # sigmoid -> 0 or 1 up to 1e-13
    inter, union = (pred * target).flatten(1).sum(1), ((pred + target) > 0).float().flatten(1).sum(1)
    torch.testing.assert_close(soft_iou(logits, target), (inter + 1) / (union + 1))
    torch.testing.assert_close(soft_iou((target * 2 - 1) * 30, target), torch.ones(2))


def test_voxel_loss_is_bce_by_default_and_adds_one_minus_soft_iou():
    target = _grid(0)
    logits = torch.randn(2, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    bce = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(voxel_loss(logits, target), bce)
    torch.testing.assert_close(
        voxel_loss(logits, target, soft_iou_weight=0.5), bce + 0.5 * (1 - soft_iou(logits, target)).mean()
    )
    # bf16 logits (autocast) are scored in fp32, and the term has a gradient that raises the IoU
    x = logits.bfloat16().requires_grad_()
    loss = voxel_loss(x, target, soft_iou_weight=1.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(x.grad.float()).all() and (x.grad.float()[target.bool()] < 0).all()


def test_voxel_loss_rejects_a_negative_weight():
    with pytest.raises(ValueError, match="soft_iou_weight must be >= 0, got -1"):
        voxel_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), soft_iou_weight=-1)


def test_cosine_is_one_cycle_with_a_short_warm_up():
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", ["scheduler=cosine", "optimizer.lr=3e-3"])
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.OneCycleLR"
    assert (cfg.scheduler.pct_start, cfg.scheduler.max_lr, cfg.scheduler.total_steps) == (0.05, 3e-3, "auto")


@pytest.mark.slow
def test_onecycle_and_soft_iou_train_in_train_py(data_dir, tmp_path):
    """total_steps: auto = every optimiser step of the run: the LR peaks at optimizer.lr and ends near 0;
    the soft-IoU term is part of the logged loss (it is > BCE alone, which is what the default run logs)."""
    run_train(
        tiny(data_dir)
        + [
            "scheduler=onecycle",
            "optimizer.lr=2e-3",
            "module.loss.soft_iou_weight=1.0",
            "logger=none",
            "module.viz_every_n_epochs=0",
            "test=false",
        ],
        tmp_path,
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    state = ckpt["lr_schedulers"][0]
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert state["total_steps"] == ckpt["global_step"] > 0 and group["max_lr"] == 2e-3
    # stepped once per optimiser step, past the peak: on its way down to ~0 at the last step
    assert state["last_epoch"] == ckpt["global_step"] and group["lr"] < 2e-3 / 2
    assert ckpt["hyper_parameters"]["loss"] == {"soft_iou_weight": 1.0}
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["val/loss"] > 0.5  # BCE (< 0.7 here) + 1 - soft IoU (~0.9 for a tiny, barely trained model)

"""The recipe's training options (docs/ablation.md, section 4): the BCE + soft-IoU loss (r2n2/losses.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from r2n2.losses import soft_iou, voxel_loss


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
    torch.testing.assert_close(voxel_loss(logits, target, soft_iou_weight=0.5),
                               bce + 0.5 * (1 - soft_iou(logits, target)).mean())
    # bf16 logits (autocast) are scored in fp32, and the term has a gradient that raises the IoU
    x = logits.bfloat16().requires_grad_()
    loss = voxel_loss(x, target, soft_iou_weight=1.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(x.grad.float()).all() and (x.grad.float()[target.bool()] < 0).all()


def test_voxel_loss_rejects_a_negative_weight():
    with pytest.raises(ValueError, match="soft_iou_weight must be >= 0, got -1"):
        voxel_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), soft_iou_weight=-1)

"""VoxelIoU / voxel_iou: hand-worked cases, a numpy reference, per-category means, chunking, 2 processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from r2n2.evaluation.metrics import VoxelIoU, voxel_iou, voxel_iou_from_logits

G = 32
A, B, C = (0, 0, 0), (5, 6, 7), (31, 31, 31)  # three voxels of a 32^3 grid


def grid(*voxels, value=1.0) -> torch.Tensor:
    """(32, 32, 32) float32 grid, ``value`` at the given voxels, 0 elsewhere."""
    g = torch.zeros(G, G, G)
    for v in voxels:
        g[v] = value
    return g


# --- hand-worked cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ((A, B), (B, C), 1 / 3),  # half overlap: 1 shared of 3 in the union
        ((A, B), (A,), 1 / 2),
        ((A, B, C), (A, B, C), 1.0),
        ((), (), 1.0),  # both empty -> 1
        ((), (A,), 0.0),  # empty prediction, non-empty target
        ((A,), (), 0.0),  # prediction on an empty target
    ],
)
def test_hand_worked(pred, gt, expected):
    probs = grid(*pred, value=0.9)[None]
    target = grid(*gt)[None]
    assert voxel_iou(probs, target).tolist() == pytest.approx([expected])
    m = VoxelIoU()
    m.update(probs, target)
    assert m.compute()["iou@0.3"].item() == pytest.approx(expected)


def test_threshold_is_inclusive():
    # p exactly at the threshold counts as occupied (3D-R2N2 / Pix2Vox use p >= t), just below does not
    target = grid(A)[None]
    assert voxel_iou(grid(A, value=0.3)[None], target, 0.3).item() == 1.0
    assert voxel_iou(grid(A, value=0.3).double()[None], target, 0.3).item() == 1.0
    assert voxel_iou(grid(A, value=0.2999)[None], target, 0.3).item() == 0.0


def test_several_thresholds_by_hand():
    # gt = {A, B}; p(A) = 0.25, p(B) = 0.45, p(C) = 0.35 (C not in gt)
    probs = (grid(A, value=0.25) + grid(B, value=0.45) + grid(C, value=0.35))[None]
    target = grid(A, B)[None]
    m = VoxelIoU(thresholds=(0.2, 0.3, 0.4, 0.5))
    m.update(probs, target)
    out = {k: v.item() for k, v in m.compute().items()}
    assert out == pytest.approx({"iou@0.2": 2 / 3, "iou@0.3": 1 / 3, "iou@0.4": 1 / 2, "iou@0.5": 0.0})


def test_mean_over_samples_not_pooled():
    # sample 1: IoU 1 on one voxel; sample 2: IoU 1/3 -> mean 2/3 (pooled over voxels it would be 2/4)
    probs = torch.stack([grid(A), grid(A, B)])
    target = torch.stack([grid(A), grid(B, C)])
    assert voxel_iou(probs, target).tolist() == pytest.approx([1.0, 1 / 3])
    m = VoxelIoU()
    m.update(probs, target)
    assert m.compute()["iou@0.3"].item() == pytest.approx(2 / 3)


# --- a plain numpy reference --------------------------------------------------------------------------


def numpy_iou(probs: np.ndarray, target: np.ndarray, t: float) -> np.ndarray:
    out = []
    for p, y in zip(probs, target):  # one sample at a time, the obvious way
        pred, gt = p >= t, y > 0.5
        union = np.logical_or(pred, gt).sum()
        out.append(1.0 if union == 0 else np.logical_and(pred, gt).sum() / union)
    return np.array(out)


def random_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, G, G, G, generator=g) < 0.2).float()
    # probabilities correlated with the target, by a weight w per sample, so IoUs spread out
    w = 0.5 * torch.rand(n, 1, 1, 1, generator=g)
    probs = w * target + (1 - w) * torch.rand(n, G, G, G, generator=g)  # in [0, 1]
    probs[0] = 0.0  # an empty prediction
    target[1] = 0.0  # an empty target
    probs[2], target[2] = 0.0, 0.0  # both empty
    return probs, target


@pytest.mark.parametrize("t", [0.2, 0.3, 0.4, 0.5])
def test_against_numpy(t):
    probs, target = random_batch(10, seed=0)
    ref = numpy_iou(probs.numpy(), target.numpy(), t)
    assert len(set(np.round(ref, 3))) > 5  # the cases are not degenerate
    np.testing.assert_allclose(voxel_iou(probs, target, t).numpy(), ref, rtol=1e-6)
    m = VoxelIoU(thresholds=(0.2, 0.3, 0.4, 0.5))
    m.update(probs, target.bool())
    assert m.compute()[VoxelIoU.key(t)].item() == pytest.approx(ref.mean(), rel=1e-6)


@pytest.mark.parametrize("t", [0.3, 0.5])
def test_iou_from_logits_equals_iou_of_probabilities(t):
    """The training step's IoU thresholds logits at log(t / (1 - t)): the same per-sample IoU as
    thresholding sigmoid(logits) at t, on uint8 and float targets, empty grids included."""
    probs, target = random_batch(10, seed=1)
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    logits[0] = -20.0  # an empty prediction (sigmoid(-20) < t)
    ref = voxel_iou(torch.sigmoid(logits), target, t)
    assert len(set(np.round(ref.numpy(), 3))) > 5 and ref[2] == 1.0  # not degenerate; both empty -> 1
    torch.testing.assert_close(voxel_iou_from_logits(logits, target, t), ref, rtol=0, atol=0)
    for dtype in (torch.uint8, torch.bool):
        torch.testing.assert_close(voxel_iou_from_logits(logits, target.to(dtype), t), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="threshold"):
        voxel_iou_from_logits(logits, target, 1.0)


# --- per category -------------------------------------------------------------------------------------


def test_per_category_by_hand():
    names = ["chair", "car", "lamp"]
    # IoUs: chair 1, 1/3; car 1/2; lamp has no sample
    probs = torch.stack([grid(A), grid(A, B), grid(A, B)])
    target = torch.stack([grid(A), grid(B, C), grid(A)])
    m = VoxelIoU(categories=names)
    m.update(probs, target, category=["chair", "chair", "car"])
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["iou@0.3"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)  # mean over samples
    assert out["iou@0.3/chair"] == pytest.approx(2 / 3)
    assert out["iou@0.3/car"] == pytest.approx(1 / 2)
    assert math.isnan(out["iou@0.3/lamp"])  # no samples: NaN, and left out of the class mean
    assert out["iou@0.3/class_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)

    # the same with integer categories given as a tensor
    m2 = VoxelIoU(categories=3)
    m2.update(probs, target, category=torch.tensor([0, 0, 1]))
    assert m2.compute()["iou@0.3/class_mean"].item() == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_bad_input_raises():
    m = VoxelIoU(categories=["chair"])
    probs, target = grid(A)[None], grid(A)[None]
    with pytest.raises(ValueError, match="unknown"):
        m.update(probs, target, category=["car"])
    with pytest.raises(ValueError, match="needs category"):
        m.update(probs, target)
    with pytest.raises(ValueError, match="without categories"):
        VoxelIoU().update(probs, target, category=["chair"])
    with pytest.raises(ValueError, match="sigmoid"):
        VoxelIoU().update(probs * 3 - 1, target)  # logits, not probabilities
    with pytest.raises(ValueError, match="must both be"):
        VoxelIoU().update(probs, target[:, :16])


# --- chunking and processes ---------------------------------------------------------------------------

CATS = ["a", "b", "c"]


def full_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    probs, target = random_batch(9, seed=1)
    category = torch.tensor([0, 1, 1, 2, 1, 0, 0, 0, 2])  # rank 1 of 2 (5:9) has no "b"
    return probs, target, category


def make_metric() -> VoxelIoU:
    return VoxelIoU(thresholds=(0.2, 0.3, 0.4, 0.5), categories=CATS)


def test_update_in_chunks_equals_once():
    probs, target, cat = full_data()
    once = make_metric()
    once.update(probs, target, cat)
    chunked = make_metric()
    for sl in (slice(0, 2), slice(2, 7), slice(7, 9)):
        chunked.update(probs[sl], target[sl], cat[sl])
    a, b = once.compute(), chunked.compute()
    assert a.keys() == b.keys() and len(a) == 4 * (1 + len(CATS) + 1)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        probs, target, cat = full_data()
        sl = slice(0, 5) if rank == 0 else slice(5, 9)  # uneven halves
        m = make_metric()
        m.update(probs[sl], target[sl], cat[sl])
        torch.save({k: v.item() for k, v in m.compute().items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    probs, target, cat = full_data()
    single = make_metric()
    single.update(probs, target, cat)
    expected = {k: v.item() for k, v in single.compute().items()}
    # one process alone on its half differs, so agreement below really needs the sync
    half = make_metric()
    half.update(probs[:5], target[:5], cat[:5])
    assert half.compute()["iou@0.3"].item() != pytest.approx(expected["iou@0.3"])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-6), (rank, k)

"""The run's honest headline: test IoU next to BOTH mean-shape baselines, and a warning when the model
is degenerate (below the image-free global mean shape, or predicting nearly the same grid for every
image, e.g. all 32,768 voxels occupied whatever the photo; ``r2n2.evaluation.spread`` measures that).
"""

from __future__ import annotations

# "nearly the same grid for every image": the thresholded predictions of different photos overlap
# this much or more on average (different ground-truth objects overlap far less: r2n2.evaluation.spread).
# (The per-voxel std is reported but not used: it is small for any set of small objects, since most
# of the cube is empty in every prediction.)
SAME_GRID_IOU = 0.9
GLOBAL, CATEGORY = "baseline/global_mean_shape_test_iou", "baseline/category_mean_shape_test_iou"


def headline(metrics: dict) -> str | None:
    """``test IoU@0.3 x | global mean-shape baseline g (+d) | category mean-shape baseline c (+d)``."""
    if "test/iou" not in metrics or GLOBAL not in metrics:
        return None
    iou = metrics["test/iou"]
    parts = [
        f"test IoU@0.3 {iou:.4f}",
        f"global mean-shape baseline {metrics[GLOBAL]:.4f} ({iou - metrics[GLOBAL]:+.4f})",
    ]
    if CATEGORY in metrics:
        parts.append(f"category mean-shape baseline {metrics[CATEGORY]:.4f} ({iou - metrics[CATEGORY]:+.4f})")
    return " | ".join(parts)


def degeneracy_warnings(metrics: dict) -> list[str]:
    """What is wrong with a model whose test metrics are ``metrics`` ([] when nothing is)."""
    out = []
    if "test/iou" in metrics and GLOBAL in metrics and metrics["test/iou"] < metrics[GLOBAL]:
        out.append(
            f"the model is below the global mean shape (test IoU@0.3 {metrics['test/iou']:.4f} < "
            f"{metrics[GLOBAL]:.4f}): predicting one fixed shape for every image would score higher"
        )
    pairwise = metrics.get("test/pred_pairwise_iou")
    if pairwise is not None and pairwise >= SAME_GRID_IOU:
        occupied = metrics.get("test/pred_occupied_fraction", float("nan"))
        out.append(
            f"the model predicts nearly the same grid for every image (mean IoU@0.3 between the test "
            f"predictions of different images {pairwise:.3f} >= {SAME_GRID_IOU}; {occupied:.1%} of the "
            "voxels occupied): it ignores its input"
        )
    return out

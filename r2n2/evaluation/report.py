"""Evaluation as papers report it: IoU per category and overall at several thresholds (mean over
samples and mean of category means), F-score@1%, for 1..5 views, against baselines that see no image
(the training set's mean shape, globally and per category) and recognition baselines
(``r2n2.evaluation.recognition``), with the threshold chosen as the protocol says (``conf/protocol``).

Everything here works on plain per-sample arrays so the figures are easy to check by hand; the
streaming scorer that produces them is ``r2n2.evaluation.scoring``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# a fine grid for choosing the threshold on val (Pix2Vox scans 0.2..0.5; DRC picks t on val)
SELECTION_GRID = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


@dataclass
class Scores:
    """Per-sample scores of one predictor on one split.

    category: (N,) names; iou: (N, T) at ``thresholds``; fscore: (N,) at ``fscore_threshold``.
    """

    category: np.ndarray
    thresholds: tuple[float, ...]
    iou: np.ndarray
    fscore: np.ndarray | None = None
    fscore_threshold: float | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """{"iou@t": {"mean_over_samples", "mean_of_category_means", "per_category"}, "fscore@1%": ...}."""
        out = {f"iou@{t:g}": _summarise(self.iou[:, j], self.category) for j, t in enumerate(self.thresholds)}
        if self.fscore is not None:
            out["fscore@1%"] = {**_summarise(self.fscore, self.category), "at_threshold": self.fscore_threshold}
        return out


def _summarise(values: np.ndarray, category: np.ndarray) -> dict:
    cats = sorted(set(category.tolist()))
    per = {c: float(values[category == c].mean()) for c in cats}
    return {
        "mean_over_samples": float(values.mean()),
        "mean_of_category_means": float(np.mean(list(per.values()))),
        "per_category": per,
    }


PROTOCOL_TEXT = {
    "ours": "every sample of the split, its own view first; threshold chosen on val",
    "pix2vox": "one sample per object, its first n renderings; best threshold chosen on test",
    "r2n2": "one sample per object, n renderings drawn with replacement (seeded), background 240 on "
    "transparent pixels, IoU at 0.4, as 3D-R2N2's test code at 13a30e2 (input resized, not cropped)",
}


def markdown_report(result: dict) -> str:
    """eval.md: the 3D-R2N2 paper's per-category layout (categories x view counts), then overall
    IoU at each threshold, F-score@1%, and the threshold chosen on val."""
    t = result["threshold"]
    key = f"iou@{t:g}"
    model = result["model"]
    views = sorted(model, key=int)
    base = result["baselines"]
    cats = sorted(model[views[0]][key]["per_category"])
    head = ["category"] + [f"{v} view{'s' if v != '1' else ''}" for v in views] + list(base)
    proto = result.get("protocol", {"name": "ours"})
    lines = [
        f"Protocol: `protocol={proto['name']}` ({PROTOCOL_TEXT.get(proto['name'], '')})",
        "",
        f"## IoU@{t:g} per category, {result['split']} split ({result['num_samples']} samples)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def row(name, pick):
        cells = [pick(model[v][key]) for v in views] + [pick(base[b][key]) for b in base]
        return f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"

    for c in cats:
        lines.append(row(c, lambda s, c=c: s["per_category"].get(c, float("nan"))))
    lines.append(row("**mean over samples** (Pix2Vox)", lambda s: s["mean_over_samples"]))
    lines.append(row("**mean of category means** (3D-R2N2)", lambda s: s["mean_of_category_means"]))

    lines += [
        "",
        f"## Overall, {result['split']} split: mean over samples / mean of category means",
        "",
        "| measure | "
        + " | ".join(f"model, {v} view{'s' if v != '1' else ''}" for v in views)
        + " | "
        + " | ".join(base)
        + " |",
        "|" + "---|" * (1 + len(views) + len(base)),
    ]
    measures = [f"iou@{x:g}" for x in result["thresholds"]] + ["fscore@1%"]
    for m in measures:
        cells = [model[v].get(m) for v in views] + [base[b].get(m) for b in base]
        fmt = ["-" if c is None else f"{c['mean_over_samples']:.3f} / {c['mean_of_category_means']:.3f}" for c in cells]
        name = f"IoU@{m[4:]}" if m.startswith("iou") else f"F-score@1% (at t={t:g})"
        lines.append(f"| {name} | " + " | ".join(fmt) + " |")

    sel = result.get("threshold_selection")
    if sel and sel.get("chosen_on") == "test":
        lines += [
            "",
            "## Best threshold chosen on the test set (as Pix2Vox reports; optimistic: not a held-out choice)",
            "",
            "| views | threshold | test IoU (mean over samples) |",
            "|---|---|---|",
        ]
        lines += [f"| {v} | {c['threshold']:g} | {c['test_iou']:.3f} |" for v, c in sel["per_views"].items()]
    elif sel:
        lines += [
            "",
            f"## Threshold chosen on val (never on test): t = {sel['threshold']:g}",
            "",
            f"val IoU {sel['val_iou']:.3f} at t = {sel['threshold']:g} (1 view); on test: IoU "
            f"{sel['test_iou']:.3f} (mean over samples), {sel['test_iou_class_mean']:.3f} (mean of "
            f"category means), F-score@1% {sel['test_fscore']:.3f}.",
        ]
    lines += [
        "",
        "Mean over samples: Pix2Vox's average. Mean of category means: 3D-R2N2's and Occupancy "
        "Networks' headline figure. Mean shapes use no image: the training set's mean occupancy, "
        f"thresholded at {t:g} (category mean shape: the category is given). Clustering, retrieval "
        "and the oracle answer with a training shape (docs/evaluation.md).",
    ]
    return "\n".join(lines) + "\n"

"""How a run shows itself: the progress bar and the model summary (``conf/callbacks/default.yaml``).

Rich's live bar and table where a person watches a terminal; Lightning's plain TQDM bar and text
summary where the output goes to a file or a CI log (Rich redraws would fill it with box art).
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar

# Rich redraws per second. Lightning's default, 100, redraws in a thread that holds the GIL while the
# training loop waits for it: +0.19..+0.71 ms on a ~1 ms step, against -0.17..+0.24 ms at 10,
# which looks as smooth (benchmarks/progress_bar_cost.py, docs/performance.md)
RICH_REFRESH_PER_SECOND = 10


def use_rich(rich: bool | None = None) -> bool:
    """``rich`` if given, else whether stdout is a terminal."""
    return sys.stdout.isatty() if rich is None else bool(rich)


def progress_bar(rich: bool | None = None, enabled: bool = True) -> RichProgressBar | TQDMProgressBar | None:
    """The progress-bar callback; None where ``trainer.enable_progress_bar`` is false (Lightning
    refuses a progress-bar callback then). ``rich``: true, false or None (= stdout is a terminal)."""
    if not enabled:
        return None
    return RichProgressBar(refresh_rate=RICH_REFRESH_PER_SECOND) if use_rich(rich) else TQDMProgressBar()


class _MixedPrecisionSize:
    """Lightning's summary sizes the weights from ``trainer.precision`` and knows only the "true"
    precisions: under ``16-mixed`` / ``bf16-mixed`` it warns that the size is inaccurate and counts
    32 bits per parameter. Mixed precision keeps the weights in fp32, so 32 bits is exact there and
    the warning is wrong; it is left in place for every other precision."""

    def _summary(self, trainer, pl_module):
        with warnings.catch_warnings():
            if str(trainer.precision).endswith("-mixed") and all(p.dtype.itemsize == 4 for p in pl_module.parameters()):
                warnings.filterwarnings("ignore", message=r"Precision \S+-mixed is not supported by the model summary")
            return super()._summary(trainer, pl_module)


class PlainModelSummary(_MixedPrecisionSize, ModelSummary):
    """Lightning's text model summary (logged, so it also lands in train.log)."""


class RichTableModelSummary(_MixedPrecisionSize, RichModelSummary):
    """Lightning's Rich model summary table."""


def model_summary(rich: bool | None = None, max_depth: int = 1) -> ModelSummary:
    """The model-summary callback, Rich or plain as :func:`progress_bar`."""
    return RichTableModelSummary(max_depth=max_depth) if use_rich(rich) else PlainModelSummary(max_depth=max_depth)

"""lightning-hydra-template's conventions and runs that read well, each composed and run for a few
steps on the tiny synthetic data: debug=default|fdr|limit|overfit|profiler, extras (config tree,
tags, ignore_warnings), logger=csv|many, the Rich/TQDM choice, callbacks=early_stopping; and, on
the real ``python train.py`` run shared with test_training.py: each log line once, none of the
warnings every run used to print, train.log ending with the test line, Figure 2 as PNGs."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from conftest import tiny
from hydra import compose, initialize_config_dir
from PIL import Image

CONF = Path(__file__).resolve().parents[1] / "conf"

# the warnings every run printed before (issue 13, item 5), by the text Lightning/torch print
KNOWN_WARNINGS = {
    "model summary under bf16": "is not supported by the model summary",
    "test(ckpt_path='best') with two checkpoint callbacks": "is called with Trainer configured with multiple",
    "deprecated pytree call": "LeafSpec",
}


def _compose(data_dir: Path, out: Path, overrides: list[str]):
    """The config of a 1-epoch tiny run into ``out``: batches of 2 (9 training, 5 validation batches),
    a small decoder (smaller checkpoints), no sanity check, no figure unless asked."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            "config",
            [
                *tiny(data_dir, epochs=1),
                f"paths.output_dir={out}",
                "data.batch_size=2",
                "data.eval_batch_size=2",
                "model.hidden_size=8",
                "trainer.num_sanity_val_steps=0",
                "module.viz_every_n_epochs=0",
                "extras.print_config=false",
                *overrides,
            ],
        )


def _run(cfg) -> dict:
    from r2n2.train.run import train

    return train(cfg)


def _steps(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]


# --- the real `python train.py` run (conftest's `trained`: the default config, 2 epochs) ----------


def test_real_run_prints_each_line_once_and_none_of_the_known_warnings(trained):
    run_dir, proc = trained
    for kind, text in KNOWN_WARNINGS.items():
        assert text not in proc.stderr, f"{kind}:\n{proc.stderr}"
    # Lightning's own "INFO: ..." console copy is gone; its records go through Hydra's handlers once
    out = proc.stdout + proc.stderr
    assert not re.search(r"^INFO: ", out, re.M), out[-3000:]
    assert "Tip:" not in out and "litlogger" not in out  # no advertisement for Lightning's cloud
    assert out.count("Seed set to 0") == 1 and out.count("Restoring states from the checkpoint path") == 1
    log = (run_dir / "train.log").read_text().splitlines()
    assert sum("Seed set to 0" in line for line in log) == 1
    assert "test IoU@0.3" in log[-1] and "global mean-shape baseline" in log[-1], log[-3:]
    # the best checkpoint is tested, named explicitly
    assert f"checkpoint path at {run_dir / 'checkpoints' / 'best.ckpt'}" in out


def test_real_run_saves_config_tree_figures_and_an_exact_model_size(trained):
    import json

    run_dir, proc = trained
    tree = (run_dir / "config_tree.log").read_text()
    assert tree.startswith("CONFIG") and "model_checkpoint" in tree and "tags:" in tree and "- dev" in tree
    assert str(run_dir) in tree  # resolved interpolations, not ${paths.output_dir}
    assert "CONFIG" in proc.stdout  # printed at start as well
    pngs = sorted((run_dir / "reconstructions").glob("epoch_*.png"))
    assert [p.name for p in pngs] == ["epoch_000.png", "epoch_001.png"]
    img = np.asarray(Image.open(pngs[-1]).convert("L"), dtype=float)
    assert img.shape[0] > 100 and img.std() > 5  # a drawn figure, not a blank page
    # the summary under bf16-mixed counts the fp32 weights: 4 bytes per parameter
    params = json.loads((run_dir / "metrics.json").read_text())["parameters"]
    assert re.search(
        rf"^{params * 4 / 1e6:.3f}\s+Total estimated model params size", (run_dir / "train.log").read_text(), re.M
    )


# --- debug=... (lightning-hydra-template's debug group), run in this process ----------------------


def test_debug_default_is_debugger_friendly(data_dir, tmp_path):
    cfg = _compose(
        data_dir,
        tmp_path,
        ["debug=default", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"],
    )
    assert cfg.task_name == "debug" and cfg.logger is None and cfg.trainer.detect_anomaly
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1 and cfg.data.num_workers == 0
    m = _run(cfg)
    assert m["epochs"] == 1 and _steps(tmp_path) == 1 and not (tmp_path / "tensorboard").exists()


def test_debug_fdr_runs_one_batch_of_each_and_saves_nothing(data_dir, tmp_path):
    cfg = _compose(data_dir, tmp_path, ["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
    m = _run(cfg)
    assert {"train/loss", "val/iou", "test/iou"} <= set(m) and not (tmp_path / "checkpoints").exists()


def test_debug_limit_takes_a_few_batches(data_dir, tmp_path):
    cfg = _compose(data_dir, tmp_path, ["debug=limit", "test=false"])  # 3 of the 9 training batches
    assert cfg.trainer.limit_train_batches == 3 and cfg.trainer.limit_val_batches == 2
    _run(cfg)
    assert _steps(tmp_path) == 3


def test_debug_overfit_trains_on_three_batches(data_dir, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        assert compose("config", ["debug=overfit"]).trainer.max_epochs == 20
    cfg = _compose(data_dir, tmp_path, ["debug=overfit", "test=false"])
    assert cfg.trainer.overfit_batches == 3
    _run(cfg)
    assert _steps(tmp_path) == 3


def test_debug_profiler_writes_its_report_into_the_run_folder(data_dir, tmp_path):
    cfg = _compose(
        data_dir,
        tmp_path,
        ["debug=profiler", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"],
    )
    _run(cfg)
    reports = list(tmp_path.glob("fit-profile*.txt"))
    assert reports and "run_training_epoch" in reports[0].read_text()


# --- loggers, early stopping --------------------------------------------------------------------


def _csv(run: Path) -> tuple[list[str], str]:
    """(metrics.csv's columns, hparams.yaml's text) of the CSV logger."""
    return (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(","), (
        run / "csv" / "hparams.yaml"
    ).read_text()


def test_many_loggers_tensorboard_and_csv_get_metrics_hparams_and_figure(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _compose(
        data_dir,
        tmp_path,
        [
            "logger=many",
            "module.viz_every_n_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
        ],
    )
    m = _run(cfg)
    columns, hparams = _csv(tmp_path)
    assert {"train/loss_step", "val/iou", "test/iou", "lr-Adam"} <= set(columns) and "tags" in hparams
    images, hparams_tab = set(), False
    for f in (tmp_path / "tensorboard").glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f), size_guidance={"images": 0, "tensors": 0})
        ea.Reload()
        images |= set(ea.Tags()["images"])
        try:
            hparams_tab |= bool(ea.PluginTagToContent("hparams"))
        except KeyError:
            pass
    assert "val/reconstructions" in images and hparams_tab  # TensorBoard found among several loggers
    assert (tmp_path / "reconstructions" / "epoch_000.png").is_file() and 0 <= m["test/iou"] <= 1


def test_early_stopping_is_optional_and_stops_on_val_iou_with_the_csv_logger(data_dir, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        assert "early_stopping" not in compose("config", []).callbacks  # off by default
    # no val IoU gain can reach 1.0: with patience 1 the run stops after its second validation
    cfg = _compose(
        data_dir,
        tmp_path,
        [
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1.0",
            "trainer.max_epochs=5",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "test=false",
            "logger=csv",
            "module.viz_every_n_epochs=2",
        ],
    )
    assert cfg.callbacks.early_stopping.monitor == "val/iou" and cfg.callbacks.early_stopping.mode == "max"
    _run(cfg)
    assert _steps(tmp_path) == 2
    # logger=csv alone: metrics and hparams in csv/, Figure 2 as PNGs without TensorBoard
    columns, hparams = _csv(tmp_path)
    assert {"train/loss_step", "val/iou", "lr-Adam"} <= set(columns) and "tags" in hparams
    assert not (tmp_path / "tensorboard").exists()
    assert [p.name for p in (tmp_path / "reconstructions").iterdir()] == ["epoch_000.png"]  # every 2nd epoch


# --- Rich where a terminal is attached, plain TQDM otherwise ---------------------------------------


def test_rich_bar_and_summary_on_a_terminal_tqdm_otherwise(monkeypatch):
    import pty

    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar

    from r2n2.train.run_callbacks import model_summary, progress_bar

    leader, follower = pty.openpty()
    read, write = os.pipe()
    try:
        with os.fdopen(os.dup(follower), "w") as tty, os.fdopen(os.dup(write), "w") as pipe:
            monkeypatch.setattr("sys.stdout", tty)  # a real terminal device
            assert isinstance(progress_bar(), RichProgressBar) and isinstance(model_summary(), RichModelSummary)
            monkeypatch.setattr("sys.stdout", pipe)  # a pipe, as in CI or `> log`
            bar, summary = progress_bar(), model_summary()
            assert isinstance(bar, TQDMProgressBar) and not isinstance(summary, RichModelSummary)
            assert isinstance(summary, ModelSummary)
            assert isinstance(progress_bar(rich=True), RichProgressBar)  # forced either way
            assert progress_bar(enabled=False) is None  # trainer.enable_progress_bar=false
    finally:
        for fd in (leader, follower, read, write):
            os.close(fd)


def test_rich_bar_redraws_at_most_ten_times_a_second_during_a_fit(monkeypatch):
    """Lightning's default Rich bar redraws up to 100 times a second in a thread that holds the GIL:
    +0.19..+0.71 ms per step of a ~1 ms loop (benchmarks/progress_bar_cost.py). Ours, on a real terminal
    over a real fit of steps of ~2 ms, redraws at most RICH_REFRESH_PER_SECOND times a second."""
    import pty
    import threading
    import time

    import lightning.pytorch as L
    import rich.live
    import torch

    from r2n2.train.run_callbacks import RICH_REFRESH_PER_SECOND, progress_bar

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            time.sleep(0.002)  # a fast card's step
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    redraws = []
    draw = rich.live.Live.refresh
    monkeypatch.setattr(rich.live.Live, "refresh", lambda self: (redraws.append(time.perf_counter()), draw(self)))
    leader, follower = pty.openpty()
    seen = []  # what the terminal received, read as it comes (a full pty buffer would block the bar)

    def read_terminal():
        try:
            while chunk := os.read(leader, 1 << 16):
                seen.append(chunk)
        except OSError:  # closed
            pass

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        with os.fdopen(os.dup(follower), "w") as tty:
            monkeypatch.setattr("sys.stdout", tty)
            bar = progress_bar()
            trainer = L.Trainer(
                max_epochs=1,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                callbacks=[bar],
                accelerator="cpu",
            )
            data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(700, 4)), batch_size=1)
            start = time.perf_counter()
            trainer.fit(Tiny(), data)
            seconds = time.perf_counter() - start
    finally:
        os.close(follower)
        reader.join(timeout=5)
        os.close(leader)
    # it drew on the terminal, over more than a second of steps
    assert seconds > 1.2 and len(redraws) >= 3 and b"train/loss" in b"".join(seen), (seconds, len(redraws))
    # the live display's start and stop redraw once each, outside the refresh thread
    assert len(redraws) <= RICH_REFRESH_PER_SECOND * seconds + 3, (len(redraws), seconds)


# --- extras --------------------------------------------------------------------------------------


def test_extras_tags_and_ignore_warnings(tmp_path, caplog):
    import logging

    from r2n2.train.extras import CONFIG_TREE_FILE, prepare_run

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", [f"paths.output_dir={tmp_path}", "tags=[ablation,bn]", "extras.ignore_warnings=true"])
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        prepare_run(cfg)
        warnings.warn("a warning the switch must silence", UserWarning, stacklevel=1)
    assert not seen and "tags: ablation, bn" in caplog.text
    assert "- ablation" in (tmp_path / CONFIG_TREE_FILE).read_text()

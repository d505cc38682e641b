"""module.cuda_graph (r2n2/train/step.py): the module's own whole step, eager where there is no CUDA device,
trains exactly as Lightning's automatic optimisation does (same losses, weights, learning rates and
step count after a real run: clipping, dropout, a per-step and a per-epoch schedule, 1..3 views), and what it
refuses. Its captured form on a GPU: tests/test_gpu_path.py."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import ROOT, tiny
from hydra import compose, initialize_config_dir

from r2n2.train.run import build


def _fit(data_dir, tmp_path, name: str, overrides: list[str]) -> tuple[dict, list[float], list[float], int, dict]:
    """A real fit: (final weights, each step's loss, each step's learning rate, global_step, first
    weights); the module as ``_fit.module``."""
    args = [
        *tiny(data_dir, epochs=2),
        "logger=none",
        "test=false",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "module.viz_every_n_epochs=0",
        "trainer.num_sanity_val_steps=0",
        "data.views_per_sample=[1,3]",
        f"paths.output_dir={tmp_path / name}",
        *overrides,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", args)
    L.seed_everything(0)
    datamodule, module, trainer, _ = build(cfg)
    losses, lrs, first = [], [], {}

    class Record(L.Callback):
        def on_train_start(self, trainer, pl_module):
            first.update({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))
            lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    trainer.callbacks.append(Record())
    trainer.fit(module, datamodule=datamodule)
    weights = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    _fit.module = module
    return weights, losses, lrs, trainer.global_step, first


@pytest.mark.parametrize("schedule", ["cosine", pytest.param("multistep", marks=pytest.mark.slow)])
def test_whole_step_trains_as_lightnings_automatic_optimisation(data_dir, tmp_path, schedule):
    sched = ["scheduler=multistep", "scheduler.milestones=[1]"] if schedule == "multistep" else []
    auto = _fit(data_dir, tmp_path, "auto", sched)
    whole = _fit(data_dir, tmp_path, "whole", [*sched, "module.cuda_graph=true"])
    weights_a, losses_a, lrs_a, steps_a, first_a = auto
    weights_w, losses_w, lrs_w, steps_w, first_w = whole
    assert steps_w == steps_a == len(losses_a) > 4  # global_step counts the module's own steps
    for k in first_a:  # the same start; then both trained
        assert torch.equal(first_w[k], first_a[k]), k
    assert any(not torch.equal(weights_a[k], first_a[k]) for k in first_a)
    torch.testing.assert_close(torch.tensor(losses_w), torch.tensor(losses_a), rtol=1e-5, atol=1e-6)
    assert lrs_w == pytest.approx(lrs_a, rel=1e-6) and len(set(lrs_a)) > 1  # the schedule moved, in both
    for k in weights_a:
        torch.testing.assert_close(weights_w[k], weights_a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_whole_step_refusals(data_dir, tmp_path):
    base = [
        *tiny(data_dir, epochs=1),
        "logger=none",
        "test=false",
        f"paths.output_dir={tmp_path / 'r'}",
        "module.cuda_graph=true",
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [*base, "+trainer.gradient_clip_algorithm=value"])
    with pytest.raises(ValueError, match="gradient_clip_algorithm=value"):
        build(cfg)
    from r2n2.train.step import make_capturable

    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="SGD cannot be captured"):
        make_capturable(sgd)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    make_capturable(adam)
    group = adam.param_groups[0]
    assert group["capturable"] and torch.is_tensor(group["lr"]) and float(group["lr"]) == pytest.approx(0.1)

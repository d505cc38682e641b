"""Every config file composes, and each group option instantiates what it names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import get_object
from omegaconf import OmegaConf

from r2n2.train.network import build_network

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml")) if not p.stem.startswith("_")]


def _compose(overrides: list[str], name: str = "config", hydra_config: bool = True):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra_config)


def test_every_group_has_options():
    expected = {"data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths", "experiment"}
    assert expected <= set(GROUPS)
    assert {g for g, _ in OPTIONS} >= expected - {"experiment"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_targets_exist(group, option):
    # protocol is a group of r2n2-eval's config (conf/eval.yaml), the rest of train.py's
    extra = (["data.source.path=x.csv"] if option == "manifest" else []) + (
        ["ckpt=x.ckpt"] if group == "protocol" else []
    )
    cfg = _compose([f"{group}={option}"] + extra, name="eval" if group == "protocol" else "config")
    node = cfg[group] if group in cfg else cfg  # @package _global_ options (experiment, debug) have no node
    container = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    targets = []

    def walk(x):
        if isinstance(x, dict):
            if "_target_" in x:
                targets.append(x["_target_"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(container)
    for t in targets:
        assert callable(get_object(t)), t  # a class or a factory function (r2n2.train.run_callbacks)


def test_default_config_resolves(tmp_path):
    cfg = _compose([f"paths.output_dir={tmp_path}"], hydra_config=False)
    OmegaConf.resolve(cfg)
    assert cfg.model._target_ == "r2n2.models.SeedModel"
    assert cfg.data.source._target_.endswith("SyntheticSource")
    # the recipe that beats the per-category mean shape (docs/ablation.md section 5)
    assert (cfg.model.encoder.norm, cfg.model.decoder.name) == ("batch", "upconv")
    assert (cfg.scheduler._target_.rsplit(".", 1)[-1], cfg.scheduler.total_steps, cfg.scheduler.pct_start) == (
        "OneCycleLR",
        "auto",
        0.05,
    )
    assert cfg.module.loss.soft_iou_weight == 1.0


@pytest.mark.parametrize("data", ["synthetic", "shapenet"])
def test_paper_experiment_is_the_report_recipe(tmp_path, data):
    cfg = _compose([f"paths.output_dir={tmp_path}", "experiment=paper", f"data={data}"], hydra_config=False)
    assert OmegaConf.to_container(cfg.model.encoder) == {"norm": "none", "init": "default"}
    assert (cfg.model.hidden_size, cfg.model.cell, cfg.model.dropout, cfg.model.decoder.name) == (
        128,
        "gru",
        0.5,
        "linear_conv3d",
    )
    assert OmegaConf.to_container(cfg.data.splits) == {"train": 20000, "val": 4000, "test": 1000}
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.augment) == (8, 50, False)
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("torch.optim.Adam", 1e-3, 1e-4)
    assert (cfg.scheduler._target_.rsplit(".", 1)[-1], cfg.scheduler.gamma) == ("MultiStepLR", 0.5)
    assert cfg.module.loss.soft_iou_weight == 0.0  # plain BCE
    assert cfg.data.source._target_.endswith("ShapeNetSource" if data == "shapenet" else "SyntheticSource")


def test_r2n2_experiment_is_the_original_recipe(tmp_path):
    cfg = _compose([f"paths.output_dir={tmp_path}", "experiment=r2n2"], hydra_config=False)
    assert cfg.model._target_.endswith("R2N2") and cfg.model.residual
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-4, 5e-5)
    assert (list(cfg.scheduler.milestones), cfg.scheduler.gamma, cfg.scheduler.interval) == (
        [20000, 60000],
        0.1,
        "step",
    )
    assert (cfg.trainer.max_steps, list(cfg.data.views_per_sample)) == (60000, [1, 5])
    # 3D-R2N2's augmentation: random crop, flip and background colour, no colour jitter
    assert dict(cfg.data.augment) == {"crop": True, "flip": True, "random_background": True, "color_jitter": 0.0}


@pytest.mark.parametrize("model", ["seed_gru", "seed_lstm", "r2n2_gru", "probe"])
def test_one_override_sets_the_resolution_of_data_and_model(tmp_path, model):
    """data.resolution=64 reaches the model config by interpolation (no second override); the seed
    models then decode to 64^3 and the original 3D-R2N2 refuses it, naming the value."""
    cfg = _compose([f"paths.output_dir={tmp_path}", f"model={model}", "data.resolution=64"], hydra_config=False)
    OmegaConf.resolve(cfg)
    assert cfg.data.resolution == cfg.model.resolution == 64
    default = _compose([f"paths.output_dir={tmp_path}", f"model={model}"], hydra_config=False)
    assert OmegaConf.to_container(default.model, resolve=True)["resolution"] == 32
    if model == "r2n2_gru":
        with pytest.raises(InstantiationException, match="32\\^3 only, got resolution 64"):
            build_network(OmegaConf.to_container(cfg.model))
    else:
        net = build_network(OmegaConf.to_container(cfg.model)).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 1, 3, 127, 127)).shape == (1, 64, 64, 64)

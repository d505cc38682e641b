"""What every run does before it starts (``r2n2.train.run.train`` calls :func:`prepare_run`):

* Lightning's log lines printed once, without its advertisements (:func:`route_lightning_logs`);
* freed CPU memory kept for reuse instead of unmapped at every step (``r2n2.train.malloc``);
* Lightning's data-loader flattening without torch's deprecated ``LeafSpec()`` (:func:`use_torch_leaf_factory`);
* the optional extras of ``conf/extras/default.yaml`` (lightning-hydra-template's convention): the
  composed config printed as a tree with rich and saved as ``config_tree.log`` in the run folder,
  the run's ``tags`` logged, and ``ignore_warnings``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from r2n2.train.malloc import keep_freed_memory
from r2n2.utils.atomic import atomic_write

log = logging.getLogger(__name__)

CONFIG_TREE_FILE = "config_tree.log"
# the tree's first branches, in this order; the other top-level keys follow in the config's order
TREE_ORDER = ("data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "module", "paths")


def prepare_run(cfg: DictConfig) -> None:
    """Call once at the start of a run, after ``cfg.paths.output_dir`` is final."""
    route_lightning_logs()
    use_torch_leaf_factory()
    keep_freed_memory()
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        log.info("ignoring all Python warnings (extras.ignore_warnings=true)")
        warnings.filterwarnings("ignore")
    if cfg.get("tags"):
        log.info("tags: %s", ", ".join(str(t) for t in cfg.tags))
    if extras.get("print_config"):
        print_config_tree(cfg, Path(cfg.paths.output_dir) / CONFIG_TREE_FILE)


class _NoAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def route_lightning_logs() -> None:
    """Let the root logger's handlers (Hydra's console and ``train.log``) print Lightning's records, once.

    ``import lightning`` attaches a console handler of its own (format ``INFO: message``) to the
    ``lightning`` logger, which also propagates to the root logger: with Hydra's job logging
    configured, every Lightning line came out twice, once bare and once timestamped. Where the root
    logger has no handlers (a plain script without Hydra), Lightning's own handler is kept. Lightning's
    tips for its cloud products ("💡 Tip: ... litlogger") are dropped either way.
    """
    import lightning  # noqa: F401  (its __init__ attaches the handler this removes)

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisement) for f in logger.filters):
            logger.addFilter(_NoAdvertisement())

    if not logging.getLogger().hasHandlers():
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers, not file handlers
                logger.removeHandler(handler)
        logger.propagate = True


def use_torch_leaf_factory() -> None:
    """Make Lightning build pytree leaves with ``torch.utils._pytree.treespec_leaf()``.

    Lightning (2.6.6, the newest release) flattens the data loaders of every fit/validate/test with
    its ``utilities._pytree._tree_flatten``, which calls ``LeafSpec()``; torch >= 2.10 deprecates that
    constructor with a FutureWarning on every run (Lightning issue #21326) and offers
    ``treespec_leaf()``, which returns the same (shared) leaf spec. Does nothing on versions without
    the factory or where Lightning no longer uses ``LeafSpec``.
    """
    import torch.utils._pytree as torch_pytree
    from lightning.pytorch.utilities import _pytree as lightning_pytree

    factory = getattr(torch_pytree, "treespec_leaf", None)
    if factory is not None and getattr(lightning_pytree, "LeafSpec", None) is torch_pytree.LeafSpec:
        lightning_pytree.LeafSpec = factory


def config_tree(cfg: DictConfig):
    """``cfg`` as a ``rich.tree.Tree``: one branch per config group (a top-level mapping), then one
    branch ``run`` with the top-level values (task_name, tags, seed, ...), each as resolved YAML."""
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    groups = [k for k in TREE_ORDER if isinstance(cfg.get(k), DictConfig)]
    groups += [k for k in cfg if k not in groups and isinstance(cfg.get(k), DictConfig)]
    values = {
        k: OmegaConf.to_container(v, resolve=True) if isinstance(v, ListConfig) else v
        for k, v in ((k, cfg.get(k)) for k in cfg if k not in groups)
    }
    for name, node in [(k, cfg.get(k)) for k in groups] + [("run", OmegaConf.create(values))]:
        text = OmegaConf.to_yaml(node, resolve=True)
        tree.add(str(name), style="bold", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    return tree


def print_config_tree(cfg: DictConfig, path: Path | None = None) -> None:
    """Print the config tree (rank 0 only) and, given ``path``, save it there as plain text."""
    import rich
    import rich.console
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    tree = config_tree(cfg)
    rich.print(tree)
    if path is not None:
        with atomic_write(path, "w") as f:
            rich.console.Console(file=f, width=120, color_system=None).print(tree)

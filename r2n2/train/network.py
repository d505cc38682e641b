"""The network as a run trains it: built from its config, its 2D convolutions in channels-last memory
format where that is fast, and compiled when asked."""

from __future__ import annotations

import hydra
import torch


def use_channels_last(net: torch.nn.Module, setting: bool | str, on_cuda: bool) -> bool:
    """Put the 2D convolutions' weights in channels-last memory format if ``setting`` is True, or
    "auto" on a CUDA GPU; the convolutions then produce channels-last activations. (The 3D parts keep
    their layout: ``Module.to(memory_format=...)`` refuses 5D weights.) Returns whether it did."""
    if not (setting is True or (setting == "auto" and on_cuda)):
        return False
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return True


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def compile_network(net: torch.nn.Module, setting: bool | str) -> bool:
    """Run ``net`` through ``torch.compile`` in place (state_dict keys stay those of the plain network).

    setting: False (eager), True (mode "default"), or a torch.compile mode: "reduce-overhead" adds CUDA
    graphs (one launch per captured graph: what pays at small batches), "max-autotune" also searches
    kernels. Returns whether it compiled."""
    if setting is False or setting is None:
        return False
    mode = "default" if setting is True else str(setting)
    if mode not in COMPILE_MODES:
        raise ValueError(f"module.compile={setting!r}: expected false, true or one of {', '.join(COMPILE_MODES)}")
    net.compile(mode=mode)
    return True


def build_network(net: dict) -> torch.nn.Module:
    """Instantiate a network from a plain config dict with ``_target_`` (conf/model/*.yaml)."""
    return hydra.utils.instantiate(net, _convert_="all")

"""Which device and precision a run trains with, when the config says ``auto``.

``trainer.accelerator: auto`` (the default) trains on a CUDA GPU when there is one, else on the CPU;
``trainer.precision: auto`` is ``bf16-mixed`` on a GPU that supports bf16 (Ampere and newer),
``16-mixed`` on an older GPU, and on the CPU ``bf16-mixed`` where the CPU computes bf16 natively
(avx512_bf16 or amx_bf16: about 6x faster than fp32 on such an AMD EPYC) and ``32-true`` elsewhere
(on an AVX2-only AMD EPYC bf16 autocast is emulated: a training step of the default model at batch 16
took 20.3 s against 1.8 s in fp32). ``trainer.benchmark: auto`` turns on
``torch.backends.cudnn.benchmark`` on a GPU (the shapes are fixed: one per view count), off on the CPU.
Explicit values (``trainer=cpu|gpu|ddp|ddp_cpu``, ``trainer.precision=32``) are kept as they are.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

AUTO = "auto"


def cuda_available() -> bool:
    return torch.cuda.is_available()


# CPU flags (Linux /proc/cpuinfo) of instructions that compute bf16 natively; without them oneDNN
# emulates bf16 and autocast is slower than fp32
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (``CPU_BF16_FLAGS``); False where that is unknown."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def choose(
    accelerator: str = AUTO,
    precision: str | int = AUTO,
    benchmark: bool | str | None = AUTO,
    cuda: bool | None = None,
    bf16: bool | None = None,
) -> dict:
    """The concrete ``{"accelerator", "precision", "benchmark"}`` for possibly-``auto`` settings.

    cuda: whether a CUDA GPU is usable; bf16: whether the device (the GPU, or the CPU when training
    there) computes bf16 fast (None = ask torch, or ``cpu_has_fast_bf16``). Raises ValueError for a
    GPU setting without a GPU.
    """
    cuda = cuda_available() if cuda is None else cuda
    if accelerator == AUTO:
        accelerator = "gpu" if cuda else "cpu"
    on_gpu = accelerator in ("gpu", "cuda")
    if on_gpu and not cuda:
        raise ValueError(
            f"trainer.accelerator={accelerator}, but torch sees no CUDA GPU "
            "(use trainer=cpu, or the default trainer.accelerator=auto)"
        )
    if precision == AUTO:
        if bf16 is None:
            bf16 = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_fast_bf16()
        precision = "bf16-mixed" if bf16 else ("16-mixed" if on_gpu else "32-true")
    if benchmark == AUTO:
        benchmark = on_gpu
    return {"accelerator": accelerator, "precision": precision, "benchmark": benchmark}


def resolve_trainer(trainer: DictConfig) -> DictConfig:
    """A copy of the ``trainer`` config with ``auto`` settings made concrete; prints the choice."""
    cfg = OmegaConf.to_container(trainer, resolve=True)
    chosen = choose(cfg.get("accelerator", AUTO), cfg.get("precision", AUTO), cfg.get("benchmark", AUTO))
    cfg.update(chosen)
    where = torch.cuda.get_device_name(0) if chosen["accelerator"] in ("gpu", "cuda") else "CPU"
    print(
        f"[r2n2] training on {chosen['accelerator']} ({where}), precision {chosen['precision']}"
        + (", cudnn.benchmark on" if chosen["benchmark"] else "")
    )
    return OmegaConf.create(cfg)

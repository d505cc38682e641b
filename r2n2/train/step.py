"""``WholeStep``: the whole training step (forward, loss, backward, gradient clipping, optimiser step)
as one function, replayed as a CUDA graph per input shape (``module.cuda_graph=true``).

Lightning's automatic optimisation passes a closure to ``optimizer.step``, which a captured graph
cannot hold, so with ``module.cuda_graph`` the module optimises by hand (``automatic_optimization =
False``) and calls this. On CUDA, the first ``WARMUP`` steps of each input shape run eagerly on a side
stream (capture needs warmed-up kernels and autograd state); the next one is captured into a graph
with its own memory pool and static input buffers, and every later step of that shape copies its
batch into those buffers and replays the graph: one launch for the whole step. A graph per shape, so
``views_per_sample: [lo, hi]`` gets one per view count (and the epoch's last, smaller batch its own).
Logging and metrics stay outside the graph, read from its output buffers.

Where capture cannot apply (no CUDA device) the same step runs eagerly, so its result can be checked
against Lightning's automatic optimisation on the CPU (tests/test_whole_step.py); on a GPU the graph
is checked against the eager step (tests/test_gpu_path.py).

The optimiser must support ``capturable`` (Adam, AdamW): its step counter and learning rate then
live on the device (the learning rate as a tensor that ``LRScheduler`` fills in place, so a schedule
changes a captured step's rate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# eager steps of a shape before its capture (PyTorch's CUDA-graph notes warm up 3 iterations)
WARMUP = 3


class WholeStep:
    """``step(images, voxels) -> (loss, logits)``, both detached and valid until the next call.

    net: the network; loss_fn: ``(logits, voxels) -> scalar loss``; optimizer: a torch optimiser
    (not Lightning's wrapper); clip: the global gradient norm to clip to (None = no clipping);
    capture: replay CUDA graphs (on a CUDA device only).
    images: (B, V, 3, S, S) float; voxels: (B, R, R, R) {0, 1}; loss: () float32; logits: (B, R, R, R).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        clip: float | None,
        capture: bool,
    ):
        self.net, self.loss_fn, self.optimizer, self.clip = net, loss_fn, optimizer, clip
        self.capture = capture
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._graphs: dict[tuple, _Graph] = {}
        self._seen: dict[tuple, int] = {}
        self._capturable = False  # set at the first step: after Lightning has restored a checkpoint's state

    def _eager(self, images: torch.Tensor, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(images)
        loss = self.loss_fn(logits, voxels)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def __call__(self, images: torch.Tensor, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.capture:
            return self._eager(images, voxels)
        if not self._capturable:
            make_capturable(self.optimizer)
            self._capturable = True
        key = (tuple(images.shape), images.dtype, tuple(voxels.shape), voxels.dtype)
        graph = self._graphs.get(key)
        if graph is None:
            seen = self._seen.get(key, 0)
            if seen < WARMUP:
                self._seen[key] = seen + 1
                return _on_side_stream(self._eager, images, voxels)
            graph = self._graphs[key] = _Graph(self._eager, images, voxels)
            log.info(
                "cuda_graph: captured the training step for images %s (%d graph(s))",
                tuple(images.shape),
                len(self._graphs),
            )
        return graph.replay(images, voxels)


class _Graph:
    """One captured step: static inputs, the graph, its outputs."""

    def __init__(self, step: Callable, images: torch.Tensor, voxels: torch.Tensor):
        self.images, self.voxels = images.clone(), voxels.clone()
        self.graph = torch.cuda.CUDAGraph()
        device_type = images.device.type
        # autocast's cache of cast weights must not outlive the capture (PyTorch: cache_enabled=False)
        autocast = torch.autocast(
            device_type,
            dtype=torch.get_autocast_dtype(device_type),
            enabled=torch.is_autocast_enabled(device_type),
            cache_enabled=False,
        )
        with autocast, torch.cuda.graph(self.graph):
            self.loss, self.logits = step(self.images, self.voxels)

    def replay(self, images: torch.Tensor, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.images.copy_(images, non_blocking=True)
        self.voxels.copy_(voxels, non_blocking=True)
        self.graph.replay()
        return self.loss.clone(), self.logits  # the loss outlives the next replay (it is logged)


def _on_side_stream(fn: Callable, *args):
    """Run ``fn`` on a side stream that waits for the current one, which then waits for it."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        out = fn(*args)
    current.wait_stream(side)
    return out


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Set ``capturable`` on every parameter group and hold each learning rate as a device tensor
    (a float would be baked into the graph at capture). Raises ValueError for an optimiser that has
    no ``capturable`` option."""
    if "capturable" not in optimizer.defaults:
        raise ValueError(
            f"module.cuda_graph=true: {type(optimizer).__name__} cannot be captured in a CUDA graph "
            "(it has no capturable option); use optimizer=adam (torch.optim.Adam or AdamW) or "
            "module.cuda_graph=false"
        )
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device)  # a restored one too
        for param in group["params"]:  # a restored optimiser's step counters, onto the device
            state = optimizer.state.get(param, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=device, dtype=torch.float32)

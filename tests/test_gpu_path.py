"""The device path: which accelerator and precision a run picks, the stop on a non-finite loss, and
(on a CUDA GPU only) a training loop without host-device synchronisation."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ROOT, run_train, tiny

from r2n2.train.accelerator import choose, cpu_has_fast_bf16

# --- accelerator and precision -------------------------------------------------------------------


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert not cpu_has_fast_bf16(str(info))  # an AVX2-only AMD EPYC: bf16 emulated, 11x slower than fp32
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_fast_bf16(str(info))
    assert not cpu_has_fast_bf16(str(tmp_path / "absent"))


def test_auto_picks_the_gpu_when_there_is_one_and_a_precision_it_supports():
    assert choose(cuda=False, bf16=True) == {"accelerator": "cpu", "precision": "bf16-mixed", "benchmark": False}
    assert choose(cuda=False, bf16=False)["precision"] == "32-true"  # emulated bf16 is slower than fp32
    assert choose(cuda=False)["precision"] == ("bf16-mixed" if cpu_has_fast_bf16() else "32-true")
    assert choose(cuda=True, bf16=True) == {"accelerator": "gpu", "precision": "bf16-mixed", "benchmark": True}
    assert choose(cuda=True, bf16=False)["precision"] == "16-mixed"  # pre-Ampere GPUs
    # explicit settings are kept: trainer=cpu on a GPU machine, trainer.precision=32, benchmark off
    assert choose("cpu", cuda=True, bf16=True) == {"accelerator": "cpu", "precision": "bf16-mixed", "benchmark": False}
    assert choose("gpu", 32, False, cuda=True, bf16=True) == {"accelerator": "gpu", "precision": 32, "benchmark": False}
    with pytest.raises(ValueError, match=r"trainer.accelerator=gpu, but torch sees no CUDA GPU"):
        choose("gpu", cuda=False)


def test_trainer_configs_default_to_auto_and_keep_their_explicit_choices():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        default = compose("config").trainer
        cpu, gpu = compose("config", ["trainer=cpu"]).trainer, compose("config", ["trainer=gpu"]).trainer
        ddp, ddp_cpu = compose("config", ["trainer=ddp"]).trainer, compose("config", ["trainer=ddp_cpu"]).trainer
    assert (default.accelerator, default.precision, default.benchmark) == ("auto", "auto", "auto")
    assert (cpu.accelerator, gpu.accelerator, ddp.accelerator, ddp_cpu.accelerator) == ("cpu", "gpu", "gpu", "cpu")
    assert gpu.precision == ddp.precision == "auto"


def test_a_run_says_what_it_chose(trained):
    """The quickstart (shrunk) on this machine: the default trainer resolves and prints its choice."""
    _, proc = trained
    device = "gpu" if torch.cuda.is_available() else "cpu"
    precision = choose(cuda=torch.cuda.is_available())["precision"]  # bf16-mixed where this machine computes bf16
    assert re.search(rf"\[r2n2\] training on {device} \(.+\), precision {precision}", proc.stdout), proc.stdout[-2000:]


# --- non-finite loss -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_naming_step_and_samples(data_dir, tmp_path):
    """A real run whose learning rate jumps x1e30 after epoch 0 (MultiStepLR): the weights blow up
    in epoch 1 and the loss turns non-finite. The run stops with an error naming the step and the
    object ids of that batch; last.ckpt still holds epoch 0's finite weights, and resuming from it
    runs into the same error at the same step (so the checkpoint is usable and the run repeatable)."""
    import hydra
    from omegaconf import OmegaConf

    from r2n2.data.samplers import EpochBatchSampler, EpochShuffleSampler

    run_dir = tmp_path / "nan"
    args = tiny(data_dir, epochs=3) + [
        "scheduler=multistep",
        "scheduler.milestones=[1]",
        "scheduler.gamma=1e30",
        "logger=none",
        "test=false",
        "module.viz_every_n_epochs=0",
    ]
    proc = run_train(args, run_dir, check=False)
    found = re.search(
        r"training loss is not finite at step (\d+) \(batch of (\d+): ([^)]*)\)", proc.stderr + proc.stdout
    )
    assert proc.returncode != 0 and found, proc.stderr[-3000:]
    step, ids = int(found.group(1)), found.group(3).split(", ")

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (run_dir / "metrics.json").exists()

    # the ids are those of batch `step` as the data module deals it out
    dm = hydra.utils.instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").data)
    dm.setup()
    train = dm.datasets["train"]
    per_epoch = len(train) // dm.batch_size
    assert step >= per_epoch  # epoch 0 (lr 1e-3) trained normally
    batches = EpochBatchSampler(EpochShuffleSampler(len(train), dm.seed, step // per_epoch), dm.batch_size)
    keys = list(batches)[step % per_epoch]
    assert ids == [train[k]["object_id"] for k in keys]

    again = run_train(args + [f"resume={run_dir}"], tmp_path / "refused", check=False)
    assert again.returncode != 0 and found.group(0) in again.stderr + again.stdout, again.stderr[-3000:]


# --- no host-device synchronisation per training step (CUDA only) --------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.set_sync_debug_mode")
def test_training_steps_make_no_host_device_sync(data_dir, tmp_path):
    """Steps 3..10 of a real default run (2 workers, pinned uint8 batches, bf16-mixed, gradient
    clipping, logging, IoU, throughput and non-finite-loss callbacks) under
    ``torch.cuda.set_sync_debug_mode("error")``: any synchronising call raises. The window runs from
    one step's end to a later step's end, so it covers fetching, transfer and on_after_batch_transfer."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from r2n2.train.run import build

    class SyncWindow(L.Callback):
        def __init__(self):
            self.steps = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps += 1
            torch.cuda.set_sync_debug_mode("error" if 3 <= self.steps < 10 else 0)

    overrides = tiny(data_dir, epochs=1) + [
        "data.num_workers=2",
        "data.source.objects_per_category=16",
        "data.batch_size=4",
        "trainer.log_every_n_steps=1000",
        "trainer.enable_progress_bar=true",
        "logger=none",
        "test=false",
        f"paths.output_dir={tmp_path}",
        "trainer.limit_val_batches=0",
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides)
    datamodule, module, trainer, _ = build(cfg)
    window = SyncWindow()
    trainer.callbacks.insert(0, window)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert window.steps >= 10


# --- module.cuda_graph: the whole step as CUDA graphs (r2n2/train/step.py) --------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA graph capture")
def test_captured_whole_step_equals_the_eager_step():
    """WholeStep with capture (a graph per view count, replayed) against the same steps eagerly, on
    two copies of the default network (dropout off): the same losses and weights after 12 steps of
    1 and 3 views, with clipping and a per-step learning-rate schedule filling the tensor rate."""
    import copy

    from r2n2.models import SeedModel
    from r2n2.train.losses import voxel_loss
    from r2n2.train.step import WARMUP, WholeStep

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    nets = [SeedModel(dropout=0.0).cuda().train()]
    nets.append(copy.deepcopy(nets[0]))
    steps, schedules = [], []
    for net, capture in zip(nets, (False, True)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        schedules.append(torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=12))
        steps.append(WholeStep(net, lambda lg, vx: voxel_loss(lg, vx, soft_iou_weight=1.0), opt, 1.0, capture))
    gen = torch.Generator(device="cuda").manual_seed(1)
    losses = ([], [])
    for i in range(12):
        views = 1 if i % 2 else 3  # two shapes: two graphs, each captured after WARMUP eager steps
        images = torch.randn(4, views, 3, 127, 127, device="cuda", generator=gen)
        voxels = (torch.rand(4, 32, 32, 32, device="cuda", generator=gen) < 0.2).to(torch.uint8)
        for k in (0, 1):
            loss, _ = steps[k](images, voxels)
            losses[k].append(float(loss))
            schedules[k].step()
    assert len(steps[1]._graphs) == 2 and 12 > 2 * WARMUP
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA graph capture")
def test_cuda_graph_run_trains_as_lightnings_automatic_optimisation_on_the_gpu(data_dir, tmp_path):
    """The CPU test of tests/test_whole_step.py on the GPU, where the step is captured (fp32)."""
    from test_whole_step import _fit

    from r2n2.train.step import WARMUP

    gpu = ["trainer.accelerator=gpu", "trainer.precision=32", "data.views_per_sample=1", "trainer.max_epochs=6"]
    weights_a, losses_a, _, steps_a, _ = _fit(data_dir, tmp_path, "auto", gpu)
    weights_w, losses_w, _, steps_w, _ = _fit(data_dir, tmp_path, "graph", [*gpu, "module.cuda_graph=true"])
    assert steps_w == steps_a > WARMUP + 4 and _fit.module._whole_step._graphs  # captured, then replayed
    torch.testing.assert_close(torch.tensor(losses_w), torch.tensor(losses_a), rtol=1e-3, atol=1e-4)
    for k in weights_a:
        torch.testing.assert_close(weights_w[k], weights_a[k], rtol=1e-3, atol=1e-4, msg=k)

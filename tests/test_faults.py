"""Faults lose nothing (issue 10): torn writes, SIGKILL at chosen moments, a full disk, and CI that
cannot skip the real-data tests. Real processes, real files, a real (tmpfs) file system."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, manifest_args, run_train, tiny, write_manifest

from r2n2.train.checkpoint_io import AtomicCheckpointIO

sys.path.insert(0, str(ROOT / "benchmarks"))
import kill_anywhere  # noqa: E402  (the harness of benchmarks/kill_anywhere.py)

# --- atomic writes: a kill or a failure mid-write leaves the old file ---------------------------------

WRITER = """
import sys, time, torch
from r2n2.utils.atomic import atomic_write
from r2n2.train.checkpoint_io import AtomicCheckpointIO
kind, path = sys.argv[1], sys.argv[2]
if kind == "checkpoint":  # ~400 MB: the write takes long enough to be caught in the middle
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(100_000_000)}, path)
else:  # metrics.json / eval.json / predictions all go through atomic_write: write slowly
    with atomic_write(path, "w") as f:
        for i in range(10_000):
            f.write("x" * 1000)
            f.flush()
            time.sleep(0.001)
"""


@pytest.mark.parametrize("kind", ["checkpoint", "atomic_write"])
def test_sigkill_mid_write_leaves_the_old_file(kind, tmp_path):
    target = tmp_path / ("last.ckpt" if kind == "checkpoint" else "metrics.json")
    if kind == "checkpoint":
        AtomicCheckpointIO().save_checkpoint({"w": torch.arange(5.0)}, target)
    else:
        target.write_text('{"old": 1}')
    old = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        tmp = list(tmp_path.glob(f".{target.name}.*.tmp"))
        if tmp and tmp[0].stat().st_size > 1_000_000:  # well into the write
            break
        time.sleep(0.001)
    assert proc.poll() is None, "the writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == old  # the old file, whole
    if kind == "checkpoint":
        assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [target.name]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("injected failure while serialising")


def test_failure_mid_checkpoint_leaves_the_old_checkpoint(tmp_path):
    target = tmp_path / "best.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(3.0)}, target)
    with pytest.raises(RuntimeError, match="injected"):
        io.save_checkpoint({"w": torch.ones(1000), "z": _Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]  # no temporary file left
    io.save_checkpoint({"w": torch.ones(2)}, target)  # and the next save replaces it whole
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))


def test_training_writes_checkpoints_through_the_atomic_plugin(tmp_path):
    from hydra import compose, initialize_config_dir

    from r2n2.train.run import build

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"paths.output_dir={tmp_path}", "logger=none"])
    _, _, trainer, _ = build(cfg)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- a full disk: a real, small tmpfs --------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs mounted at tmp_path/fs; ``resize(size)`` remounts it with another size ("300k", "200m")."""
    mnt = tmp_path / "fs"
    mnt.mkdir()

    def mount(size: str, remount: bool = False) -> None:
        opts = f"remount,size={size}" if remount else f"size={size}"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")

    mount("1m")
    yield SimpleNamespace(path=mnt, resize=lambda size: mount(size, remount=True))
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_checkpoint_keeps_the_old_one(small_fs):
    target = small_fs.path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(4.0)}, target)
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"w": torch.ones(1_000_000)}, target)  # 4 MB into a 1 MB file system
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4.0))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_train_on_a_full_disk_says_so_leaves_nothing_torn_and_continues_with_space(small_fs, tmp_path):
    """Data and outputs on one small tmpfs. 64 KB: packing the cache (~90 KB) fails; 200 MB: epoch 0's two
    checkpoints (79 MB each) fit, epoch 1's do not; 400 MB: resume= finishes the run. The sizes are
    those of the linear decoder's checkpoints (the default up-convolution one writes 36 MB, which
    would fit twice), so the test names it."""
    fs = small_fs.path
    csv = write_manifest(tmp_path / "src", objects=6, views=2)
    args = manifest_args(csv, fs / "data", epochs=2) + ["model.decoder.name=linear_conv3d"]
    run = fs / "run"
    small_fs.resize("64k")

    def full(proc):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("train.py: error: ") and "No space left on device" in last, last
        assert not list(fs.rglob("*.tmp")) and not (run / "metrics.json").exists()
        return last

    assert str(fs / "data" / "cache") in full(run_train(args, run, check=False))
    small_fs.resize("200m")
    assert str(run / "checkpoints") in full(run_train(args, run, check=False))
    ckpts = {p.name: torch.load(p, weights_only=True) for p in (run / "checkpoints").glob("*.ckpt")}
    assert ckpts["last.ckpt"]["epoch"] == 0  # epoch 0's checkpoints, whole
    small_fs.resize("400m")
    run_train([*args, f"resume={run}"], tmp_path / "resume-hydra")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


# --- kill anywhere: SIGKILL at chosen moments of a real run, then continue it ----------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    [kill_anywhere.Moment("ckpt", index=2), kill_anywhere.Moment("train", 1, 0), kill_anywhere.Moment("test", 0, 1)],
    ids=str,
)
def test_killed_run_continues_to_the_uninterrupted_result(moment, data_dir, trained, tmp_path):
    """The CI subset of benchmarks/kill_anywhere.py (which kills at 10 moments, default loader
    settings): mid checkpoint write (epoch 0's last.ckpt), mid epoch 1, and in the final test (after the
    last checkpoint: the continued run only tests), on the `trained` run's config."""
    straight, _ = trained
    args = tiny(data_dir) + ["+callbacks.beacon._target_=kill_anywhere.PhaseBeacon"]
    row = kill_anywhere.trial(moment, args, tmp_path / "run", data_dir, kill_anywhere.final_state(straight))
    assert row["kill"] == "killed" and row["exit"] == 0, row
    assert row["weights equal"] and row["metrics equal"], row


# --- CI cannot skip the real-data tests -------------------------------------------------------------


def test_shared_data_is_here(shared_data):
    assert (shared_data / "r2n2-sample" / "ShapeNetRendering").is_dir()


@pytest.mark.parametrize("require", ["1", ""])
def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(require, tmp_path):
    """A test using the ``shared_data`` fixture, run by pytest with the data folder absent."""
    (tmp_path / "test_uses_shared.py").write_text("def test_it(shared_data):\n    assert shared_data.is_dir()\n")
    env = {
        **os.environ,
        "R2N2_SHARED_DATA": str(tmp_path / "absent"),
        "R2N2_REQUIRE_SHARED": require,
        "PYTHONPATH": str(ROOT / "tests"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "conftest",
            str(tmp_path / "test_uses_shared.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if require:
        assert proc.returncode == 1 and "R2N2_REQUIRE_SHARED=1 requires them" in proc.stdout, proc.stdout[-2000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-2000:]

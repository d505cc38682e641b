"""Voxel and image formats on the real files in ../shared/data and on small generated files.

Expectations come from ../shared/data/README.md and REFERENCE.md, from hand computation, or from
naive reference implementations written here (a plain-Python binvox decoder, a loop implementing
adaptive max pooling's window rule), never from the code under test.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

from r2n2.data.errors import DataError
from r2n2.data.formats import (
    Binvox,
    composite,
    load_voxels,
    read_array,
    read_binvox,
    read_mat,
    read_rgba,
    write_binvox,
)

# ../shared/data/README.md: occupied voxels as read by the reference reader (binvox_rw, fix_coords=True)
README_COUNTS = {
    "dimatura_binvox-rw-py__chair.binvox": 1002,
    "dimatura_binvox-rw-py__8a85.binvox": 14382,
    "lraxue_3D-R2N2__model.binvox": 1104,
    "piaomz_Pix2Vox_Keras__root_model.binvox": 516,
    "piaomz_Pix2Vox_Keras__bench_modelt_transposed021.binvox": 1263,
    "piaomz_Pix2Vox_Keras__bench_predict001.binvox": 1339,
}
MAT_1 = "3DShapeNets_volumetric_data__test_chair_000000000_1.mat"
MAT_4 = "3DShapeNets_volumetric_data__test_chair_000000000_4.mat"


# --- independent references ----------------------------------------------------------------------

from helpers.reference import naive_binvox  # noqa: E402


def naive_adaptive_max_pool(grid: np.ndarray, out: int = 32) -> np.ndarray:
    """3D adaptive max pooling by its window rule: output i covers [floor(i*N/out), ceil((i+1)*N/out))."""
    n = grid.shape[0]
    win = [(math.floor(i * n / out), math.ceil((i + 1) * n / out)) for i in range(out)]
    res = np.zeros((out, out, out), dtype=bool)
    for i, (a0, a1) in enumerate(win):
        for j, (b0, b1) in enumerate(win):
            for k, (c0, c1) in enumerate(win):
                res[i, j, k] = grid[a0:a1, b0:b1, c0:c1].any()
    return res


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def real_binvox_files(shared: Path) -> list[Path]:
    return sorted((shared / "binvox").glob("*.binvox")) + sorted(
        (shared / "r2n2-sample" / "ShapeNetVox32").glob("*/*/model.binvox")
    )


def assert_names(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    """The DataError's message starts with the file and names the fault (regex ``words``)."""
    msg = str(err.value)
    assert isinstance(err.value, DataError)
    assert msg.startswith(f"{path}: "), msg
    for w in words:
        assert re.search(w, msg, re.IGNORECASE), f"{w!r} not in {msg!r}"


# --- binvox: real files ---------------------------------------------------------------------------


def test_binvox_matches_naive_reference_decoder_on_every_real_file(shared_data):
    files = real_binvox_files(shared_data)
    assert len(files) == 6 + 7
    for path in files:
        vox = read_binvox(path)
        data, dims, translate, scale = naive_binvox(path)
        assert vox.data.dtype == bool
        assert vox.data.shape == dims == (32, 32, 32)
        np.testing.assert_array_equal(vox.data, data, err_msg=path.name)
        assert vox.dims == dims
        assert vox.translate == pytest.approx(translate) and vox.scale == pytest.approx(scale)


def test_binvox_occupied_counts_match_readme(shared_data):
    for name, count in README_COUNTS.items():
        assert int(read_binvox(shared_data / "binvox" / name).data.sum()) == count, name


def test_binvox_bounding_boxes_match_readme(shared_data):
    vox32 = shared_data / "r2n2-sample" / "ShapeNetVox32"
    for folder in ("03001627/pix2voxkeras_chair", "03636649/pix2voxkeras_lamp"):  # y (up) spans 0..31
        occ = np.argwhere(read_binvox(vox32 / folder / "model.binvox").data)
        assert (occ[:, 1].min(), occ[:, 1].max()) == (0, 31), folder
    occ = np.argwhere(read_binvox(shared_data / "binvox" / "lraxue_3D-R2N2__model.binvox").data)
    assert occ.min(0).tolist() == [10, 10, 0] and occ.max(0).tolist() == [21, 21, 31]


def test_binvox_header_is_kept(shared_data):
    vox = read_binvox(shared_data / "binvox" / "dimatura_binvox-rw-py__chair.binvox")
    assert vox.dims == (32, 32, 32) and vox.translate == (0.0, 0.0, 0.0) and vox.scale == pytest.approx(41.133)
    vox = read_binvox(shared_data / "binvox" / "dimatura_binvox-rw-py__8a85.binvox")
    assert vox.translate == pytest.approx((1131.81, 21.398, -1.6942)) and vox.scale == pytest.approx(30.206)


def test_binvox_round_trips_every_real_file_exactly(shared_data, tmp_path):
    for path in real_binvox_files(shared_data):
        vox = read_binvox(path)
        out = tmp_path / path.name
        write_binvox(out, vox)
        back = read_binvox(out)
        np.testing.assert_array_equal(back.data, vox.data, err_msg=path.name)
        assert back.translate == vox.translate and back.scale == vox.scale and back.dims == vox.dims
        # the written file is also what the naive reference decoder reads
        np.testing.assert_array_equal(naive_binvox(out)[0], vox.data)


def test_binvox_round_trips_generated_grids_with_long_runs(tmp_path):
    rng = np.random.default_rng(0)
    grids = [np.zeros((32, 32, 32), bool), np.ones((32, 32, 32), bool), rng.random((32, 32, 32)) < 0.5]
    blocky = np.zeros((32, 32, 32), bool)
    blocky[3:29, :, 5:] = True  # runs of several hundred voxels: split into pairs of <= 255
    grids.append(blocky)
    grids.append(rng.random((8, 12, 20)) < 0.3)  # non-cubic dims are legal in binvox
    for i, g in enumerate(grids):
        out = tmp_path / f"g{i}.binvox"
        write_binvox(out, Binvox(g, translate=(-0.5, 0.25, 1e-3), scale=0.875))
        back = read_binvox(out)
        np.testing.assert_array_equal(back.data, g)
        np.testing.assert_array_equal(naive_binvox(out)[0], g)
        assert back.translate == (-0.5, 0.25, 1e-3) and back.scale == 0.875


def test_binvox_axis_order_real_prediction(shared_data):
    """A real network prediction stored in the swapped (x, z, y) order, like its transposed ground
    truth: IoU ~0.70 against that, ~0.04 against the correctly read ground truth, and ~0.70 again
    once its (y, z) axes are swapped back (REFERENCE.md)."""
    pred = read_binvox(shared_data / "binvox" / "piaomz_Pix2Vox_Keras__bench_predict001.binvox").data
    swapped_gt = read_binvox(shared_data / "binvox" / "piaomz_Pix2Vox_Keras__bench_modelt_transposed021.binvox").data
    gt = read_binvox(
        shared_data / "r2n2-sample" / "ShapeNetVox32" / "02828884" / "pix2voxkeras_bench" / "model.binvox"
    ).data
    assert iou(pred, swapped_gt) == pytest.approx(0.70, abs=0.01)
    assert iou(pred, gt) == pytest.approx(0.04, abs=0.01)
    assert iou(pred.transpose(0, 2, 1), gt) == pytest.approx(0.70, abs=0.01)
    np.testing.assert_array_equal(swapped_gt.transpose(0, 2, 1), gt)


def test_load_voxels_reads_binvox_as_32_cubed_bool(shared_data):
    path = shared_data / "binvox" / "lraxue_3D-R2N2__model.binvox"
    grid = load_voxels(path)
    assert grid.dtype == bool and grid.shape == (32, 32, 32)
    np.testing.assert_array_equal(grid, naive_binvox(path)[0])


# --- binvox: faults -------------------------------------------------------------------------------


HEADER = b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n"


@pytest.mark.parametrize(
    "blob, words",
    [
        (b"#voxbin 1\n" + HEADER.split(b"\n", 1)[1] + b"\x01\x08", ["bad magic"]),
        (HEADER + b"\x01\x05\x00\x04", ["overflow", "9", "8"]),  # 9 voxels in a 2x2x2 grid
        (HEADER + b"\x01\x05", ["truncated", "5", "8"]),  # runs short of dim
        (HEADER + b"\x01\x04\x00", ["truncated", "pairs"]),  # odd byte count
        (HEADER.replace(b"dim 2 2 2", b"dim 2 two 2") + b"\x01\x08", ["malformed", "dim 2 two 2"]),
        (HEADER.replace(b"scale 1", b"scale") + b"\x01\x08", ["malformed", "scale"]),
        (HEADER.replace(b"dim 2 2 2", b"dim 2 2") + b"\x01\x04", ["dim"]),
        (b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\n", ["header", "data"]),  # header cut short
        (HEADER.replace(b"scale 1", b"colour red") + b"\x01\x08", ["unknown", "colour red"]),
    ],
    ids=[
        "bad-magic",
        "run-overflow",
        "runs-short",
        "odd-bytes",
        "bad-dim",
        "bad-scale",
        "two-dims",
        "no-data-line",
        "unknown-line",
    ],
)
def test_binvox_faults_raise_dataerror_naming_file_and_fault(tmp_path, blob, words):
    path = tmp_path / "bad.binvox"
    path.write_bytes(blob)
    with pytest.raises(DataError) as err:
        read_binvox(path)
    assert_names(err, path, *words)
    with pytest.raises(DataError):  # and through load_voxels
        load_voxels(path)


def test_binvox_fault_on_a_truncated_real_file(shared_data, tmp_path):
    blob = (shared_data / "binvox" / "lraxue_3D-R2N2__model.binvox").read_bytes()
    path = tmp_path / "cut.binvox"
    path.write_bytes(blob[: len(blob) - 4])  # lose the last two run pairs
    with pytest.raises(DataError) as err:
        read_binvox(path)
    assert_names(err, path, "truncated")


@pytest.mark.parametrize("suffix", [".binvox", ".mat", ".npy", ".npz"])
def test_missing_voxel_file(tmp_path, suffix):
    path = tmp_path / f"nowhere{suffix}"
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "not found")


def test_unsupported_voxel_suffix(tmp_path):
    path = tmp_path / "grid.obj"
    path.write_text("v 0 0 0\n")
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "unsupported", r"\.obj")


# --- .mat -----------------------------------------------------------------------------------------


def test_mat_real_files_found_with_and_without_key(shared_data):
    for path in sorted((shared_data / "mat").glob("*.mat")):
        raw = scipy.io.loadmat(path)["instance"]
        plain, keyed = read_mat(path), read_mat(path, key="instance")
        assert plain.shape == keyed.shape == (30, 30, 30) and plain.dtype == np.int8
        np.testing.assert_array_equal(plain, raw)
        np.testing.assert_array_equal(keyed, raw)
        assert set(np.unique(raw)) <= {0, 1}


def test_mat_real_files_pooled_to_32_cubed_by_adaptive_max_pooling(shared_data):
    for path in sorted((shared_data / "mat").glob("*.mat")):
        raw = scipy.io.loadmat(path)["instance"] > 0
        grid = load_voxels(path)
        assert grid.shape == (32, 32, 32) and grid.dtype == bool
        np.testing.assert_array_equal(grid, naive_adaptive_max_pool(raw))
        np.testing.assert_array_equal(load_voxels(path, key="instance"), grid)
        # 30 -> 32 pooling only duplicates slices: no voxel is lost
        assert grid.sum() >= raw.sum()


def test_mat_chair_files_are_the_same_chair_rotated_about_axis_2(shared_data):
    a = scipy.io.loadmat(shared_data / "mat" / MAT_1)["instance"]
    b = scipy.io.loadmat(shared_data / "mat" / MAT_4)["instance"]
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(np.rot90(a, 1, axes=(0, 1)), b)  # rotation in the (0, 1) plane
    np.testing.assert_array_equal(
        read_mat(shared_data / "mat" / MAT_4), np.rot90(read_mat(shared_data / "mat" / MAT_1), 1, axes=(0, 1))
    )
    # the reader keeps the stored axis order, and the pooling's windows are symmetric, so the
    # relation survives load_voxels
    np.testing.assert_array_equal(
        np.rot90(load_voxels(shared_data / "mat" / MAT_1), 1, axes=(0, 1)), load_voxels(shared_data / "mat" / MAT_4)
    )


def test_mat_wrong_key_lists_the_keys(shared_data):
    path = shared_data / "mat" / MAT_1
    with pytest.raises(DataError) as err:
        load_voxels(path, key="Volume")
    assert_names(err, path, "'Volume'", "instance")


def test_mat_without_3d_array(tmp_path):
    path = tmp_path / "flat.mat"
    scipy.io.savemat(path, {"image": np.zeros((4, 5)), "label": np.array([3])})
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "no 3D array", "image")


def test_mat_with_several_3d_arrays_needs_a_key(tmp_path):
    path = tmp_path / "two.mat"
    a = np.zeros((32, 32, 32), np.uint8)
    a[1, 2, 3] = 1
    scipy.io.savemat(path, {"Volume": a, "other": np.ones((32, 32, 32), np.uint8)})
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "several", "Volume", "other")
    np.testing.assert_array_equal(load_voxels(path, key="Volume"), a > 0)


def test_mat_non_cubic(tmp_path):
    path = tmp_path / "box.mat"
    scipy.io.savemat(path, {"Volume": np.zeros((30, 30, 20), np.int8)})
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "cubic", r"30, 30, 20")


def test_mat_v73_hdf5_refused(tmp_path):
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    assert len(header) == 128
    path = tmp_path / "v73.mat"
    path.write_bytes(header + b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    for call in (lambda: read_mat(path), lambda: load_voxels(path), lambda: load_voxels(path, key="Volume")):
        with pytest.raises(DataError) as err:
            call()
        assert_names(err, path, "v7.3", "HDF5")


def test_mat_corrupt(tmp_path):
    path = tmp_path / "junk.mat"
    path.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "unreadable")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat"])
def test_empty_voxel_grid_is_a_dataerror_naming_the_file(tmp_path, suffix):
    # (0, 0, 0) is cubic but holds nothing to pool: a DataError (which on_error=skip skips), not
    # torch's "adaptive_max_pool3d(): Expected input to have non-zero size" naming no file
    path = tmp_path / f"empty{suffix}"
    empty = np.zeros((0, 0, 0), np.uint8)
    {
        ".npy": lambda: np.save(path, empty),
        ".npz": lambda: np.savez(path, grid=empty),
        ".mat": lambda: scipy.io.savemat(path, {"Volume": empty}),
    }[suffix]()
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "empty", r"\(0, 0, 0\)")


@pytest.mark.parametrize("n", [16, 20, 30, 32, 45, 64, 100])
def test_any_cubic_resolution_brought_to_32_by_adaptive_max_pooling(tmp_path, n):
    rng = np.random.default_rng(n)
    raw = rng.random((n, n, n)) < 0.02  # sparse: max pooling must keep isolated voxels
    path = tmp_path / f"v{n}.npy"
    np.save(path, raw.astype(np.uint8))
    grid = load_voxels(path)
    assert grid.shape == (32, 32, 32) and grid.dtype == bool
    expected = naive_adaptive_max_pool(raw)
    np.testing.assert_array_equal(grid, expected)
    torch_ref = F.adaptive_max_pool3d(torch.from_numpy(raw).float()[None, None], 32)[0, 0].numpy() > 0
    np.testing.assert_array_equal(expected, torch_ref)  # the naive rule is torch's rule
    if n == 32:
        np.testing.assert_array_equal(grid, raw)


# --- .npy / .npz ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32, np.int64])
def test_npy_round_trip(tmp_path, dtype):
    raw = np.random.default_rng(1).random((32, 32, 32)) < 0.3
    path = tmp_path / "v.npy"
    np.save(path, raw.astype(dtype))
    np.testing.assert_array_equal(load_voxels(path), raw)
    np.testing.assert_array_equal(read_array(path), raw.astype(dtype))


def test_npz_single_3d_array_found_among_others(tmp_path):
    raw = np.random.default_rng(2).random((32, 32, 32)) < 0.3
    path = tmp_path / "v.npz"
    np.savez_compressed(path, occupancy=raw, label=np.array([4]), image=np.zeros((5, 5)))
    np.testing.assert_array_equal(load_voxels(path), raw)
    np.testing.assert_array_equal(load_voxels(path, key="occupancy"), raw)


def test_npz_several_3d_arrays_need_a_key(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.random((32, 32, 32)) < 0.3, rng.random((64, 64, 64)) < 0.01
    path = tmp_path / "v.npz"
    np.savez(path, a=a, b=b)
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "one 3D array", "'a'", "'b'")
    np.testing.assert_array_equal(load_voxels(path, key="a"), a)
    np.testing.assert_array_equal(load_voxels(path, key="b"), naive_adaptive_max_pool(b))
    with pytest.raises(DataError) as err:
        load_voxels(path, key="c")
    assert_names(err, path, "'c'", "'a'", "'b'")


@pytest.mark.parametrize("shape", [(32, 32, 16), (32, 32), (4, 32, 32, 32)])
def test_npy_non_cubic(tmp_path, shape):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "cubic", re.escape(str(shape)))


def test_npy_corrupt(tmp_path):
    path = tmp_path / "v.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError) as err:
        load_voxels(path)
    assert_names(err, path, "unreadable")


# --- images ---------------------------------------------------------------------------------------


def pil_array(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def test_real_rgba_rendering(shared_data):
    path = (
        shared_data / "r2n2-sample" / "ShapeNetRendering" / "03001627" / "pix2voxkeras_chair" / "rendering" / "00.png"
    )
    with Image.open(path) as im:
        assert im.mode == "RGBA" and im.size == (137, 137)
        raw = np.asarray(im)
    rgba = read_rgba(path)
    assert rgba.dtype == np.uint8 and rgba.shape == (137, 137, 4)
    np.testing.assert_array_equal(rgba, raw)
    # background alpha 0 (REFERENCE.md), an object in the middle
    assert rgba[0, 0, 3] == 0 and rgba[..., 3].max() == 255
    small = read_rgba(path, 127)
    assert small.shape == (127, 127, 4) and small.dtype == np.uint8
    assert small[0, 0, 3] == 0 and small[63, :, 3].max() > 0
    # the object's opaque area shrinks by about (127/137)^2
    ratio = (small[..., 3] > 127).sum() / (raw[..., 3] > 127).sum()
    assert ratio == pytest.approx((127 / 137) ** 2, rel=0.05)


def test_real_rgb_photos(shared_data):
    for path in sorted((shared_data / "photos").glob("*.png")):
        rgb = pil_array(path, "RGB")
        assert rgb.shape == (127, 127, 3)
        for size in (None, 127):  # already 127: no resize, so exactly the photo
            rgba = read_rgba(path, size)
            assert rgba.shape == (127, 127, 4)
            np.testing.assert_array_equal(rgba[..., :3], rgb)
            assert (rgba[..., 3] == 255).all()
        # composite leaves opaque photos unchanged
        np.testing.assert_array_equal(composite(read_rgba(path)), rgb.astype(np.float32))


def test_jpeg_from_a_real_photo(shared_data, tmp_path):
    rgb = pil_array(shared_data / "photos" / "1.png", "RGB")
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    rgba = read_rgba(path)
    assert rgba.shape == (127, 127, 4) and (rgba[..., 3] == 255).all()
    assert np.abs(rgba[..., :3].astype(int) - rgb).mean() < 3  # lossy, but the same photo
    big = tmp_path / "big.jpeg"
    Image.fromarray(rgb).resize((300, 300), Image.BICUBIC).save(big, quality=95)
    back = read_rgba(big, 127)
    assert back.shape == (127, 127, 4) and (back[..., 3] == 255).all()
    assert np.abs(back[..., :3].astype(int) - rgb).mean() < 8


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit greyscale PNG (PIL mode I;16) used to come out almost all white: values clipped at 255."""
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65,520
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgba = read_rgba(tmp_path / "g16.png")
    assert rgba.dtype == np.uint8 and (rgba[..., 3] == 255).all()
    for c in range(3):
        np.testing.assert_array_equal(rgba[..., c], grey >> 8)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    """A portrait phone photo is stored landscape with EXIF Orientation=6 ("rotate 90 degrees
    clockwise to display", EXIF 2.32 tag 0x0112): it must reach the model upright."""
    rgb = np.full((20, 40, 3), 40, np.uint8)  # stored 40 wide, 20 high
    rgb[:8, :8] = (255, 0, 0)  # red top-left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    rgba = read_rgba(path)
    assert rgba.shape == (40, 20, 4)  # displayed 20 wide, 40 high
    # turning 90 degrees clockwise takes the stored top-left corner to the top-right
    assert rgba[2, -3, 0] > 200 and rgba[2, -3, 1] < 60
    assert rgba[2, 2, 0] < 100 and rgba[-3, 2, 0] < 100 and rgba[-3, -3, 0] < 100
    # and as a square view, resized after turning it
    square = read_rgba(path, 16)
    assert square[1, -2, 0] > 200 and square[1, 1, 0] < 100


def test_greyscale_png_becomes_rgb_with_opaque_alpha(tmp_path):
    grey = (np.arange(127 * 127) % 251).astype(np.uint8).reshape(127, 127)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    rgba = read_rgba(path)
    assert rgba.shape == (127, 127, 4)
    for c in range(3):
        np.testing.assert_array_equal(rgba[..., c], grey)
    assert (rgba[..., 3] == 255).all()


def test_palette_png_keeps_its_transparency(tmp_path):
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9)
    idx = np.zeros((40, 50), np.uint8)
    idx[10:30, 5:25] = 1
    idx[12:20, 30:45] = 2
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette)
    path = tmp_path / "pal.png"
    im.save(path, transparency=0)  # palette entry 0 is fully transparent
    rgba = read_rgba(path)
    assert rgba.shape == (40, 50, 4)
    np.testing.assert_array_equal(rgba[..., 3], np.where(idx == 0, 0, 255))
    np.testing.assert_array_equal(rgba[idx == 1][:, :3], np.tile([200, 100, 50], ((idx == 1).sum(), 1)))
    np.testing.assert_array_equal(rgba[idx == 2][:, :3], np.tile([0, 255, 0], ((idx == 2).sum(), 1)))
    # composited, the transparent entry becomes the background
    assert (composite(rgba)[idx == 0] == 240).all()


@pytest.mark.parametrize("size", [(64, 64), (137, 137), (300, 200), (20, 127)])
def test_other_sizes_resized_to_127(tmp_path, size):
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 140, 220  # uniform: resizing must keep the colour
    path = tmp_path / "u.png"
    Image.fromarray(rgb).save(path)
    rgba = read_rgba(path, 127)
    assert rgba.shape == (127, 127, 4)
    np.testing.assert_array_equal(rgba[..., :3], np.broadcast_to([30, 140, 220], (127, 127, 3)))
    assert (rgba[..., 3] == 255).all()


def test_resize_does_not_bleed_transparent_colour(tmp_path):
    """Transparent pixels coloured pure red around an opaque blue square: after resizing, no pixel
    that is at all visible may turn red (resizing works on premultiplied alpha)."""
    rgba = np.zeros((137, 137, 4), np.uint8)
    rgba[..., 0] = 255  # transparent red
    rgba[40:97, 40:97] = (0, 0, 255, 255)
    path = tmp_path / "sq.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    small = read_rgba(path, 127)
    visible = small[..., 3] > 0
    edge = visible & (small[..., 3] < 255)
    assert edge.any()  # there is an antialiased edge to check
    assert (small[visible][:, 0] == 0).all()
    assert (small[visible][:, 2] >= 250).all()


def test_composite_matches_hand_computation():
    rgba = np.array(
        [[[100, 50, 200, 128], [0, 0, 0, 0], [255, 255, 255, 0], [10, 20, 30, 255], [255, 0, 0, 51]]], np.uint8
    )
    out = composite(rgba)
    assert out.dtype == np.float32 and out.shape == (1, 5, 3)
    a = 128 / 255
    np.testing.assert_allclose(
        out[0, 0], [100 * a + 240 * (1 - a), 50 * a + 240 * (1 - a), 200 * a + 240 * (1 - a)], rtol=1e-6
    )
    assert out[0, 1].tolist() == [240, 240, 240]  # fully transparent -> exactly the background
    assert out[0, 2].tolist() == [240, 240, 240]
    assert out[0, 3].tolist() == [10, 20, 30]  # fully opaque -> exactly the colour
    np.testing.assert_allclose(out[0, 4], [255 * 0.2 + 240 * 0.8, 240 * 0.8, 240 * 0.8], rtol=1e-6)
    np.testing.assert_allclose(
        composite(rgba, 225)[0, 0],
        [100 * a + 225 * (1 - a), 50 * a + 225 * (1 - a), 200 * a + 225 * (1 - a)],
        rtol=1e-6,
    )


def test_composite_real_rendering_background_is_exactly_240(shared_data):
    path = shared_data / "r2n2-sample" / "ShapeNetRendering" / "02958343" / "pix2voxkeras_car" / "rendering" / "05.png"
    for size in (None, 127):
        rgba = read_rgba(path, size)
        out = composite(rgba)
        clear = rgba[..., 3] == 0
        assert clear.sum() > rgba.shape[0] * rgba.shape[1] // 4
        assert (out[clear] == 240).all()
        opaque = rgba[..., 3] == 255
        np.testing.assert_array_equal(out[opaque], rgba[opaque][:, :3].astype(np.float32))


# --- images: faults -------------------------------------------------------------------------------


def test_corrupt_png(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as err:
        read_rgba(path)
    assert_names(err, path, "not a readable image|corrupt")


def test_truncated_real_png(shared_data, tmp_path):
    blob = (
        shared_data / "r2n2-sample" / "ShapeNetRendering" / "03001627" / "pix2voxkeras_chair" / "rendering" / "03.png"
    ).read_bytes()
    for cut in (len(blob) // 2, len(blob) - 30, 60):
        path = tmp_path / f"cut{cut}.png"
        path.write_bytes(blob[:cut])
        with pytest.raises(DataError) as err:
            read_rgba(path, 127)
        assert_names(err, path, "truncated|corrupt|not a readable")


def test_png_with_bad_crc(shared_data, tmp_path):
    blob = bytearray((shared_data / "photos" / "0.png").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside the image data
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        read_rgba(path)
    assert_names(err, path, "corrupt|truncated")


def test_missing_image(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DataError) as err:
        read_rgba(path)
    assert_names(err, path, "not found")


# --- checkpoints: what is wrong, never PyTorch's advice to unpickle anything ----------------------


class NotAWeight:
    """A class a checkpoint must not hold (weights_only refuses to rebuild it)."""


def _checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad checkpoint files and the fault each message must name."""
    good = {"state_dict": {"w": torch.zeros(3)}, "hyper_parameters": {"net": {"_target_": "r2n2.models.SeedModel"}}}
    torch.save(good, tmp_path / "good.ckpt")
    blob = (tmp_path / "good.ckpt").read_bytes()
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": NotAWeight()}, tmp_path / "object.ckpt")
    cases = {
        "random": (
            np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes(),
            "not a readable PyTorch checkpoint",
        ),
        "text": (b"hello world\n", "not a readable PyTorch checkpoint"),
        "empty": (b"", "empty"),
        "truncated": (blob[: len(blob) // 2], "truncated"),
        "pickle": (__import__("pickle").dumps({"state_dict": 1}), "not a readable PyTorch checkpoint"),
        "object": ((tmp_path / "object.ckpt").read_bytes(), "another program"),
    }
    out = {}
    for name, (data, fault) in cases.items():
        (tmp_path / f"{name}.ckpt").write_bytes(data)
        out[name] = (tmp_path / f"{name}.ckpt", fault)
    return out


def test_bad_checkpoints_say_what_is_wrong_without_pytorchs_advice(tmp_path):
    from r2n2.train.checkpoint import CheckpointError, load_checkpoint

    for name, (path, fault) in _checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: "), msg
        assert fault in msg, (name, msg)
        assert "weights_only" not in msg and "torch.load" not in msg and "\x1b" not in msg, (name, msg)
        assert "\n" not in msg, (name, msg)


@pytest.mark.parametrize("n", [64, 100, 128])
def test_finer_grids_are_pooled_to_a_finer_resolution(tmp_path, n):
    raw = np.random.default_rng(n).random((n, n, n)) < 0.02
    path = tmp_path / f"v{n}.npy"
    np.save(path, raw.astype(np.uint8))
    grid = load_voxels(path, resolution=64)
    assert grid.shape == (64, 64, 64) and grid.dtype == bool
    np.testing.assert_array_equal(grid, naive_adaptive_max_pool(raw, 64))


@pytest.mark.parametrize("n, resolution", [(32, 64), (64, 128), (30, 64)])
def test_a_grid_coarser_than_a_finer_resolution_is_refused_naming_the_file(tmp_path, n, resolution):
    """Above 32, pooling a coarser grid up would only repeat its voxels: a DataError names the file, its
    shape and the resolution (at 32 the seed report's 30^3 grids stay accepted: the test above)."""
    path = tmp_path / f"v{n}.binvox"
    write_binvox(path, np.ones((n, n, n), bool))
    with pytest.raises(DataError) as err:
        load_voxels(path, resolution=resolution)
    assert_names(err, path, f"\\({n}, {n}, {n}\\)", f"coarser than data.resolution={resolution}")

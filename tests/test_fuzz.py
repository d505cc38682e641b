"""The file readers under generated malformed input: only the project's clear error escapes.

A short, deterministic run of benchmarks/fuzz.py's generators (a few hundred inputs per parser;
``python benchmarks/fuzz.py`` runs 10,000 each), then one regression test per distinct escape the
long run found: each input here made a reader raise something else, crash or allocate gigabytes
before the fix.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given
from PIL import Image

from r2n2.data.errors import DataError
from r2n2.data.formats import load_voxels, read_binvox, read_rgba
from r2n2.data.sources import ErrorPolicy, ManifestSource, ShapeNetSource
from r2n2.train.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("r2n2_fuzz_benchmark", ROOT / "benchmarks" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()

# inputs per parser in CI (deterministic: derandomized hypothesis, no example database)
CI_EXAMPLES = {"binvox": 150, "mat": 150, "npy": 150, "npz": 100, "image": 100, "csv": 150, "checkpoint": 60}


@pytest.fixture(scope="module")
def seeds(shared_data, tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("fuzz-seeds")
    return {name: parser.seeds(shared_data, work) for name, parser in fuzz.PARSERS.items()}


@pytest.mark.parametrize("name", list(CI_EXAMPLES))
def test_generated_malformed_inputs_give_only_the_clear_error(name, seeds, tmp_path):
    parser = fuzz.PARSERS[name]
    path = tmp_path / f"input{parser.suffix}"
    outcomes = []

    @fuzz.fuzz_settings(CI_EXAMPLES[name])
    @given(parser.strategy(seeds[name]))
    def feed(value):
        path.write_bytes(fuzz.build(value))
        outcome, detail = fuzz.classify(parser.read, path, timeout=20.0)
        assert outcome != "escape", detail
        outcomes.append(outcome)

    feed()
    # the generators reach the parsers' error paths, and some inputs stay valid (e.g. a flipped pixel)
    assert outcomes.count("clean") > len(outcomes) // 2
    assert len(outcomes) >= CI_EXAMPLES[name] // 2


# --- regressions: one per distinct escape found by benchmarks/fuzz.py ---------------------------------


def _mat_v5(dims: list[int], compressed: bool, data_type: int = 9) -> bytes:
    """A MATLAB v5 file holding one double matrix ``Volume`` whose header declares ``dims`` and whose
    data element declares type ``data_type`` (9: miDOUBLE)."""
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    name = b"Volume"
    body = (
        struct.pack("<IIII", 6, 8, 6, 0)  # array flags: class double
        + struct.pack("<II", 5, 4 * len(dims))
        + b"".join(struct.pack("<i", d) for d in dims).ljust(8 * -(-len(dims) // 2), b"\0")
        + struct.pack("<II", 1, len(name))
        + name.ljust(8, b"\0")
        + struct.pack("<II", data_type, 8)
        + struct.pack("<d", 1.0)
    )
    element = struct.pack("<II", 14, len(body)) + body
    if compressed:
        packed = zlib.compress(element)
        element = struct.pack("<II", 15, len(packed)) + packed
    return header + element


def test_mat_declaring_negative_or_huge_dims_or_unknown_types_is_refused_not_crashing(tmp_path):
    """scipy trusts the declared dims and data types: a negative dim or a data type >= 20 crashed the
    process (SIGSEGV), a huge dim is allocated. Read in a child process, so that a crash fails this
    test instead of ending the suite."""
    cases = {
        "negative dims": ([-(2**31), 0, 21], 9, "declares shape"),
        "negative dim": ([-1, 4, 4], 9, "declares shape"),
        "huge dims": ([2**31 - 1] * 3, 9, "declares shape"),
        "type 20": ([1, 1, 1], 20, "unknown type 20"),
        "type 99": ([1, 1, 1], 99, "unknown type 99"),
    }
    paths, faults = [], []
    for i, (dims, data_type, fault) in enumerate(cases.values()):
        for compressed in (True, False):
            paths.append(tmp_path / f"case{i}{'z' * compressed}.mat")
            paths[-1].write_bytes(_mat_v5(dims, compressed, data_type))
            faults.append(fault)
    code = (
        "import sys\nfrom r2n2.data.formats import load_voxels\nfrom r2n2.data.errors import DataError\n"
        "for p in sys.argv[1:]:\n    try:\n        load_voxels(p, key='Volume')\n    except DataError as e:\n"
        "        print(e, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(os.fspath, paths)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-1500:])
    lines = done.stdout.splitlines()
    assert len(lines) == len(paths), done.stdout
    for path, fault, line in zip(paths, faults, lines):
        assert line.startswith(f"{path}: ") and fault in line, line


def test_mat_complex_or_cell_voxels_are_refused(tmp_path):
    path = tmp_path / "complex.mat"
    scipy.io.savemat(path, {"instance": np.ones((4, 4, 4), np.complex64)})
    with pytest.raises(DataError, match=r"no 3D array .*'instance': 'complex single \(4, 4, 4\)'"):
        load_voxels(path)
    with pytest.raises(DataError, match="'instance' in .mat file is a complex single"):
        load_voxels(path, key="instance")
    path = tmp_path / "cell.mat"
    scipy.io.savemat(path, {"Volume": np.array([np.zeros((2, 2, 2)), "a"], dtype=object)})
    with pytest.raises(DataError, match="'Volume' in .mat file is a cell"):
        load_voxels(path, key="Volume")


def test_mat_with_several_arrays_names_the_config_key(tmp_path):
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"a": np.zeros((4, 4, 4)), "b": np.zeros((4, 4, 4))})
    with pytest.raises(DataError, match="data.source.voxel_key"):
        load_voxels(path)


def test_binvox_declaring_a_huge_grid_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.binvox"
    path.write_bytes(b"#binvox 1\ndim 2147483648 2147483648 2147483648\ntranslate 0 0 0\nscale 1\ndata\n\x01\xff")
    with pytest.raises(DataError, match=r"larger than the format allows") as err:
        read_binvox(path)
    assert str(err.value).startswith(f"{path}: ")


def _npy(shape: tuple[int, ...], descr: str, body: bytes) -> bytes:
    """A .npy file whose header declares ``shape`` of ``descr`` and whose data is ``body``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def _npz(member: bytes, compressed: bool, name: str = "grid.npy") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        zf.writestr(name, member)
    return buf.getvalue()


@pytest.mark.parametrize(
    "shape, descr, fault",
    [
        ((4096, 4096, 4096), "|b1", r"declares shape \(4096, 4096, 4096\) of bool: more than \d+ voxels"),
        ((64, 64, 64), "<f8", r"declares shape \(64, 64, 64\) of float64: 2097152 bytes, (it|the file) holds 100"),
    ],
    ids=["over-the-limit", "over-the-file"],
)
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".npz-deflated"])
def test_numpy_header_declaring_more_than_allowed_or_held_is_refused_before_allocating(
    tmp_path, shape, descr, fault, suffix
):
    """np.load allocates what a header declares: (4096,)^3 in a 100-byte file was a bare MemoryError
    naming no file (which on_error=skip does not catch)."""
    member = _npy(shape, descr, bytes(100))
    path = tmp_path / f"declares{suffix.split('-')[0]}"
    path.write_bytes(member if suffix == ".npy" else _npz(member, compressed=suffix.endswith("deflated")))
    with pytest.raises(DataError, match=fault) as err:
        load_voxels(path)
    assert str(err.value).startswith(f"{path}: ")


def _broken_deflate() -> bytes:
    blob = bytearray(_npz(_npy((8, 8, 8), "|b1", bytes(512)), compressed=True))
    at = blob.index(b"grid.npy") + len(b"grid.npy")  # the first bytes of the member's deflate stream
    blob[at : at + 4] = b"\xff\xff\xff\xff"
    return bytes(blob)


@pytest.mark.parametrize(
    "suffix, blob, fault",
    [
        (".npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|b1'\n", "unreadable NumPy file"),  # TokenError
        (".npz", _npz(b"not an array", False, "notes.txt"), "one 3D array"),  # AttributeError: bytes have no ndim
        (".npz", _broken_deflate(), "unreadable NumPy file"),  # zlib.error
    ],
    ids=["unterminated-header", "npz-without-npy", "bad-deflate-stream"],
)
def test_damaged_numpy_headers_and_zips_are_a_clear_error(tmp_path, suffix, blob, fault):
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=fault) as err:
        load_voxels(path)
    assert str(err.value).startswith(f"{path}: ")


def _png(width: int, height: int) -> bytes:
    """A PNG header declaring ``width x height`` RGBA pixels, with valid CRCs and a little data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [9_000, 100_000])
def test_png_declaring_a_huge_size_is_refused_before_decoding(tmp_path, side):
    """100,000^2 raised PIL's DecompressionBombError (not caught); 9,000^2 (81 MP, under PIL's own
    limit) was allocated: 324 MB of RGBA for a 100-byte file."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png(side, side))
    with pytest.raises(DataError, match=r"larger than the \d+ pixels allowed|too large") as err:
        read_rgba(path, 127)
    assert str(err.value).startswith(f"{path}: ")


def test_images_in_other_formats_are_refused(shared_data, tmp_path):
    path = tmp_path / "photo.tif"
    Image.open(shared_data / "photos" / "0.png").save(path, format="TIFF")
    with pytest.raises(DataError, match="not PNG or JPEG"):
        read_rgba(path)


def _manifest(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "m.csv"
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize(
    "blob, fault",
    [
        (b"image,voxels,category\na.png,a.mat\n", "line 2: empty image, voxels or category"),  # AttributeError
        (b"image,voxels,category\n\xff\xfe,a.mat,chair\n", "not UTF-8"),  # UnicodeDecodeError
        (b"image,voxels,category\n" + b"a" * 200_000 + b",a.mat,chair\n", "malformed CSV near line"),  # csv.Error
        (b"image,voxels,category\na\x00.png,a.mat,chair\n", "line 2: a path contains a NUL byte"),
        (b"image,voxels,category\na.png,a.mat,\n", "line 2: empty image, voxels or category"),
    ],
)
def test_manifest_faults_name_the_csv_and_the_line(tmp_path, blob, fault):
    path = _manifest(tmp_path, blob)
    with pytest.raises(DataError) as err:
        ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{path}: ") and fault in str(err.value), str(err.value)


def test_manifest_with_a_byte_order_mark_is_read(tmp_path):
    """Excel writes UTF-8 CSVs with a BOM; the first column was then '\\ufeffimage' and missing."""
    path = _manifest(tmp_path, b"\xef\xbb\xbfimage,voxels,category\na.png,a.mat,chair\n")
    [record] = ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    assert (record.category, Path(record.voxels).name) == ("chair", "a.mat")


@pytest.mark.parametrize(
    "text", ["7", '{"a": 1}', '[["03001627"]]', '[{"taxonomy_id": 1, "taxonomy_name": "c", "train": "ab"}]']
)
def test_taxonomy_of_the_wrong_shape_is_a_clear_error(shared_data, tmp_path, text):
    tax = tmp_path / "ShapeNet.json"
    tax.write_text(text)
    with pytest.raises(DataError) as err:
        ShapeNetSource(os.fspath(shared_data / "r2n2-sample"), taxonomy=os.fspath(tax)).records(ErrorPolicy("raise"))
    assert str(err.value).startswith(f"{tax}: ") and "Pix2Vox ShapeNet.json format" in str(err.value)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "obj",
    [
        {"state_dict": {}, "hyper_parameters": 7},  # TypeError: argument of type 'int' is not iterable
        {"state_dict": {}, "hyper_parameters": {"net": [1]}},
        {"state_dict": [1], "hyper_parameters": {"net": {"_target_": "r2n2.models.SeedModel"}}},
    ],
)
def test_checkpoint_with_malformed_hyper_parameters_is_a_clear_error(tmp_path, obj):
    path = tmp_path / "odd.ckpt"
    path.write_bytes(_saved(obj))
    with pytest.raises(CheckpointError, match="not a Lightning training checkpoint|another model") as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ")


def test_checkpoint_whose_zip_declares_more_than_the_file_holds_is_refused(tmp_path):
    """A zip entry's declared size is what torch allocates for it: checked against the file's size."""
    blob = bytearray(_saved({"state_dict": {"w": torch.zeros(4)}, "hyper_parameters": {"net": {"_target_": "x"}}}))
    at = blob.find(b"PK\x01\x02")  # the first central directory record (data.pkl)
    name_len = struct.unpack("<H", blob[at + 28 : at + 30])[0]
    assert blob[at + 46 : at + 46 + name_len].endswith(b"data.pkl")
    blob[at + 24 : at + 28] = struct.pack("<I", 0x7FFFFFFF)  # its uncompressed size: 2 GiB
    path = tmp_path / "declares.ckpt"
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="declare") as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ")

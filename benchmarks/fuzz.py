"""Fuzzing every reader of a file a user hands the project: binvox, .mat, .npy, .npz, images
(PNG/JPEG), manifest CSV, checkpoints (issue 10, item 5).

    python benchmarks/fuzz.py                           # 10,000 inputs per parser (~15 min, 2 cores)
    python benchmarks/fuzz.py --examples 300 --parsers binvox csv --save-escapes /tmp/escapes

Inputs are generated with hypothesis (derandomized: the same inputs every run): the real files of
``../shared/data`` mutated (bit flips, overwritten bytes, interesting integers such as 0xFFFFFFFF,
truncations, inserted, deleted and repeated ranges) and structure-aware files (binvox headers with
wrong or huge dims and run lengths; .mat files written by scipy and by hand with huge declared dims
and sizes; .npy headers declaring any shape, dtype and order over data of any length, and .npz
zips of such members; PNGs with valid CRCs declaring any size, depth and colour type; JPEGs with
patched frame sizes; CSVs with missing columns, short rows, long fields, NULs, bad UTF-8; Lightning checkpoints
with one archive entry damaged, dropped or renamed and the CRCs made right again).

Each input is read the way the project reads it (``read_binvox``, ``load_voxels`` for .mat, .npy
and .npz, ``read_rgba(path, 127)``, ``ManifestSource.records``, ``load_module``) and counted as

- **clean error**: ``DataError`` / ``CheckpointError`` whose message starts with the file's path;
- **accepted**: read as valid (a mutation that kept the file valid, e.g. a flipped pixel);
- **escape**: any other exception, a ``DataError`` not naming the file, a MemoryError, an input
  taking longer than ``--timeout`` seconds (a hang), or one that grows the process's peak RSS by
  more than ``--rss-limit`` MiB (a huge allocation).

Each parser runs in its own process (so its peak RSS is its own) under an address-space limit of
its start-up size + 6 GiB. The table gives the counts, the slowest input and the peak RSS.

Measured on this code, 2-core AMD EPYC, no GPU, shared with other jobs (load 12-30, so times are
inflated), ``python benchmarks/fuzz.py`` (mat: ``--parsers mat``, after its reader was replaced;
npy, npz: ``--parsers npy npz``, after theirs was):

    parser       inputs  clean errors  accepted  escapes  max time   max RSS
    binvox        10000          9775       225        0     147ms    907MiB
    mat           10000          9543       457        0     308ms    889MiB
    npy           10000          8983      1017        0     246ms    924MiB
    npz           10000          9427       573        0    1717ms   1022MiB
    image         10000          9461       539        0     517ms    956MiB
    csv           10000          9440       560        0     110ms    938MiB
    checkpoint    10000          9052       948        0     830ms    924MiB

Max RSS is the process's peak; ~795 MiB of it is the imports (torch, Lightning) before any input.
Before the fixes the same generators found: .mat crashes (SIGSEGV in scipy), np.load's
TokenError/AttributeError/BadZipFile/zlib.error on .npy and .npz (486 escapes in 2 x 1,000), PIL's uncaught
DecompressionBombError and 324 MB decodes of 100-byte PNGs, KeyError/TypeError from checkpoints,
AttributeError/UnicodeDecodeError/csv.Error from manifests (tests/test_fuzz.py has one test each).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# --- generic mutations of real files ------------------------------------------------------------------

# integers that break size fields: zero, one, sign and width boundaries, the largest values
INTERESTING_INTS = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
]


def _interesting_bytes(value: int, width: int, order: str) -> bytes:
    return (value & ((1 << 8 * width) - 1)).to_bytes(width, order)


# Strategies return bytes (small generated files) or a ``Recipe``: a no-argument function that builds
# the file from a real one. Hypothesis holds on to the values it generates while it runs, so a
# strategy returning 10,000 mutated copies of a 9 MB checkpoint would hold ~90 GB.
Recipe = Callable[[], bytes]


def build(value: bytes | Recipe) -> bytes:
    """The file a strategy's value stands for."""
    return value() if callable(value) else value


def draw_edits(draw, length: int, head: int = 512) -> list[tuple]:
    """1..4 random edits of a file of ``length`` bytes; positions favour the first ``head`` bytes."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(min(length, head) - 1, 0)) | st.integers(0, max(length - 1, 0)))
        op = draw(st.sampled_from(["flip", "byte", "int", "truncate", "insert", "delete", "repeat", "zero"]))
        if op == "flip":
            arg = 1 << draw(st.integers(0, 7))
        elif op == "byte":
            arg = draw(st.integers(0, 255))
        elif op == "int":
            arg = _interesting_bytes(
                draw(st.sampled_from(INTERESTING_INTS)),
                draw(st.sampled_from([1, 2, 4, 8])),
                draw(st.sampled_from(["little", "big"])),
            )
        elif op == "insert":
            arg = draw(st.binary(min_size=1, max_size=64))
        elif op in ("delete", "zero"):
            arg = draw(st.integers(1, 256))
        elif op == "repeat":
            arg = (draw(st.integers(1, 256)), draw(st.integers(1, 8)))
        else:
            arg = None
        edits.append((op, pos, arg))
    return edits


def apply_edits(blob: bytes, edits: list[tuple]) -> bytes:
    """``blob`` with ``edits`` (from ``draw_edits``) applied in order; positions past the end are clamped."""
    data = bytearray(blob)
    for op, pos, arg in edits:
        if not data:
            data += b"\x00"
        pos = min(pos, len(data) - 1)
        if op == "flip":
            data[pos] ^= arg
        elif op == "byte":
            data[pos] = arg
        elif op == "int":
            data[pos : pos + len(arg)] = arg
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = arg
        elif op == "delete":
            del data[pos : pos + arg]
        elif op == "repeat":
            data[pos:pos] = data[pos : pos + arg[0]] * arg[1]
        else:
            data[pos : pos + arg] = bytes(len(data[pos : pos + arg]))
    return bytes(data)


@st.composite
def mutated(draw, blobs: list[bytes], head: int = 512) -> Recipe:
    """One of the real files ``blobs`` with 1..4 random edits: bit flips, bytes, interesting integers
    (0xFFFFFFFF, 0x80000000, ...), truncation, inserted, deleted, repeated and zeroed ranges."""
    i = draw(st.integers(0, len(blobs) - 1))
    edits = draw_edits(draw, len(blobs[i]), head)
    return lambda: apply_edits(blobs[i], edits)


@st.composite
def then_mutated(draw, strategy: st.SearchStrategy[bytes]) -> Recipe:
    """A (small) file from ``strategy`` with 1..4 random edits."""
    blob = draw(strategy)
    edits = draw_edits(draw, len(blob))
    return lambda: apply_edits(blob, edits)


# --- binvox -------------------------------------------------------------------------------------------

DIMS = [0, 1, 2, 3, 31, 32, 33, 64, 255, 256, 1024, 1025, 65536, 2**31 - 1, 2**31, 2**32, 2**63, 10**20, -1, -32]


def _word(draw) -> bytes:
    return draw(
        st.sampled_from(
            [
                b"0",
                b"1",
                b"-0.5",
                b"1e308",
                b"1e999",
                b"nan",
                b"inf",
                b"-inf",
                b"x",
                b"",
                b"0x10",
                b"1_0",
                b"\xff",
                b"9" * 50,
            ]
        )
    )


@st.composite
def binvox_files(draw, bodies: list[bytes]) -> bytes:
    """Headers with any dims (huge, zero, negative, too few or many), odd lines, and run bytes that
    are real, random, or sized to fill the declared grid."""
    magic = draw(
        st.sampled_from(
            [b"#binvox 1", b"#binvox", b"#binvox 2", b"#binvox x", b"#binvo", b"binvox 1", b"#binvox " + b"9" * 5000]
        )
    )
    dims = draw(st.lists(st.sampled_from(DIMS) | st.integers(-2, 40), min_size=0, max_size=4))
    lines = [
        b"dim " + b" ".join(str(d).encode() for d in dims),
        b"translate " + b" ".join(_word(draw) for _ in range(draw(st.integers(0, 4)))),
        b"scale " + b" ".join(_word(draw) for _ in range(draw(st.integers(0, 2)))),
    ]
    lines = draw(st.permutations(lines))[: draw(st.integers(0, 3))]
    lines += draw(
        st.lists(
            st.sampled_from([b"# comment", b"", b"dim 32 32 32", b"bogus 1", b"data"])
            | st.binary(max_size=20).filter(lambda b: b"\n" not in b),
            max_size=3,
        )
    )
    if draw(st.booleans()):
        lines.append(b"data")
    body_kind = draw(st.sampled_from(["real", "random", "fill", "none"]))
    if body_kind == "real":
        body = draw(st.sampled_from(bodies))
    elif body_kind == "random":
        body = draw(st.binary(max_size=600))
    elif body_kind == "fill":  # runs adding up to the declared size (capped), values 0/1 or any byte
        total = int(np.prod([max(d, 0) for d in dims], dtype=object)) if dims else 0
        total = min(total, 40_000)
        pairs = [(draw(st.integers(0, 2)), 255)] * (total // 255) + [(1, total % 255)]
        body = bytes(b for pair in pairs for b in pair)
    else:
        body = b""
    return magic + b"\n" + b"\n".join(lines) + b"\n" + body


# --- .mat ---------------------------------------------------------------------------------------------

MI_INT8, MI_UINT32, MI_INT32, MI_DOUBLE, MI_MATRIX, MI_COMPRESSED = 1, 6, 5, 9, 14, 15
MX_CLASSES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0, 99]  # cell, struct, ..., double, int8


def _tag(kind: int, nbytes: int) -> bytes:
    return struct.pack("<II", kind, nbytes & 0xFFFFFFFF)


def _pad8(b: bytes) -> bytes:
    return b + bytes(-len(b) % 8)


@st.composite
def mat_handmade(draw) -> bytes:
    """A MATLAB v5 file written by hand: one matrix whose dims, class and declared sizes are drawn
    (huge dims, sizes that disagree with the data, compressed or not)."""
    header = b"MATLAB 5.0 MAT-file, fuzz".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    dims = draw(
        st.lists(
            st.sampled_from([0, 1, 2, 3, 30, 32, 1000, 2**16, 2**31 - 1, 2**31, 2**32 - 1]) | st.integers(-3, 40),
            min_size=0,
            max_size=5,
        )
    )
    mclass = draw(st.sampled_from(MX_CLASSES))
    data = draw(st.binary(max_size=300))
    declared_data = draw(st.sampled_from([len(data), 0, 2**31 - 1, 2**32 - 1]) | st.integers(0, 4096))
    name = draw(st.sampled_from([b"instance", b"Volume", b"", b"a" * 70, b"\xff\xfe"]))
    body = (
        _tag(MI_UINT32, 8)
        + struct.pack("<II", mclass, 0)
        + _tag(MI_INT32, 4 * len(dims))
        + _pad8(b"".join(struct.pack("<I", d & 0xFFFFFFFF) for d in dims))
        + _tag(MI_INT8, len(name))
        + _pad8(name)
        + _tag(draw(st.sampled_from([MI_DOUBLE, MI_INT8, MI_UINT32, 0, 20, 99])), declared_data)
        + _pad8(data)
    )
    declared = draw(st.sampled_from([len(body), 0, 2**32 - 1]) | st.integers(0, len(body) + 64))
    element = _tag(MI_MATRIX, declared) + body
    if draw(st.booleans()):
        packed = zlib.compress(element)
        element = (
            _tag(MI_COMPRESSED, draw(st.sampled_from([len(packed), 2**32 - 1]) | st.integers(0, len(packed)))) + packed
        )
    return header + element


@st.composite
def mat_savemat(draw) -> bytes:
    """Files scipy.io.savemat writes (v5 or v4, compressed or not) holding arrays of any shape and
    dtype, strings, cells, structs and sparse matrices: valid .mat files that are not voxel grids."""
    import scipy.io
    import scipy.sparse

    values = {}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["instance", "Volume", "input", "x", "y", "__meta"]))
        kind = draw(st.sampled_from(["array", "array", "string", "cell", "struct", "sparse"]))
        if kind == "array":
            shape = tuple(draw(st.lists(st.integers(0, 33), max_size=4)))
            if int(np.prod(shape)) > 5_000:
                shape = (2,) * len(shape)
            dtype = draw(st.sampled_from([bool, np.int8, np.uint8, np.int32, np.float32, np.float64, np.complex64]))
            values[key] = (np.arange(int(np.prod(shape))) % 3).reshape(shape).astype(dtype)
        elif kind == "string":
            values[key] = draw(st.text(max_size=20))
        elif kind == "cell":
            values[key] = np.array([np.zeros((2, 2, 2)), "a"], dtype=object)
        elif kind == "struct":
            values[key] = {"Volume": np.ones((3, 3, 3)), "n": 1}
        else:
            values[key] = scipy.sparse.eye(4, format="csc")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "field name starting with an underscore is ignored": meant
        try:
            scipy.io.savemat(buf, values, format=draw(st.sampled_from(["5", "4"])), do_compression=draw(st.booleans()))
        except Exception:  # v4 cannot hold cells, structs or 3D arrays: write v5 then
            buf = io.BytesIO()
            scipy.io.savemat(buf, values)
    return buf.getvalue()


# --- NumPy .npy / .npz --------------------------------------------------------------------------------

NPY_DESCRS = [
    "|b1",
    "|u1",
    "|i1",
    "<i4",
    ">i4",
    "<i8",
    "<f4",
    ">f8",
    "<c16",
    "|O",
    "|V8",
    "<U3",
    "|S0",
    "[('a', '<f8')]",
    "x",
]


@st.composite
def npy_handmade(draw) -> bytes:
    """A .npy file written by hand: a header declaring any shape (huge, zero, negative, any rank),
    dtype (objects, strings, structs, nonsense) and order, and data that is random, none, or sized
    to fill the declared shape."""
    shape = tuple(draw(st.lists(st.sampled_from(DIMS) | st.integers(0, 40), max_size=4)))
    descr = draw(st.sampled_from(NPY_DESCRS))
    fortran = draw(st.booleans())
    text = draw(
        st.sampled_from(
            [
                f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}",
                f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}",  # a list descr unquoted
                f"{{'descr': '{descr}', 'shape': {shape}}}",
                "{}",
                "[1, 2]",
                "__import__('os')",
                "{'descr': '|b1'",
            ]
        )
    )
    header = text.encode("latin-1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)]))
    size = struct.pack(
        "<H" if version == (1, 0) else "<I",
        draw(st.sampled_from([len(header), 0, 0xFFFF]) | st.integers(0, len(header) + 8)),
    )
    body_kind = draw(st.sampled_from(["fill", "random", "none"]))
    if body_kind == "fill":  # the bytes the declared shape needs (capped)
        n = int(np.prod([max(d, 0) for d in shape], dtype=object)) if shape else 1
        body = bytes([draw(st.sampled_from([0, 1, 0xFF]))]) * min(n * 8, 40_000)
    elif body_kind == "random":
        body = draw(st.binary(max_size=600))
    else:
        body = b""
    return b"\x93NUMPY" + bytes(version) + size + header + body


@st.composite
def npz_files(draw, npys: list[bytes]) -> bytes:
    """A zip of 0..3 members, each a real or hand-written .npy (or not a .npy at all), stored or
    deflated: what ``np.savez`` and ``np.savez_compressed`` write, and what they never would."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(["grid.npy", "occupancy.npy", "label.npy", "notes.txt", "a/b.npy", ".npy"]))
            member = draw(st.sampled_from(npys) | npy_handmade() | st.binary(max_size=64))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name": a zip may hold one, so may this
                zf.writestr(name, member)
    return buf.getvalue()


# --- images -------------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = [0, 1, 2, 127, 137, 4096, 30000, 65535, 2**24, 2**31 - 1, 2**31, 2**32 - 1]


def png_chunk(kind: bytes, data: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + data) ^ (0 if crc_ok else 1)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@st.composite
def png_files(draw) -> bytes:
    """PNGs with valid CRCs (so the decoder gets past them) declaring any width, height, bit depth,
    colour type and interlace, with image data short, long, empty or not zlib, and odd chunks."""
    w, h = draw(st.sampled_from(SIZES) | st.integers(1, 300)), draw(st.sampled_from(SIZES) | st.integers(1, 300))
    ihdr = struct.pack(
        ">IIBBBBB",
        w,
        h,
        draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])),
        draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7])),
        0,
        0,
        draw(st.sampled_from([0, 1, 2])),
    )
    chunks = [png_chunk(b"IHDR", ihdr[: draw(st.sampled_from([13, 13, 12, 0]))])]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from([b"PLTE", b"tRNS", b"zTXt", b"iCCP", b"tEXt", b"gAMA", b"pHYs", b"acTL", b"eXIf"]))
        payload = draw(st.binary(max_size=64))
        if kind in (b"zTXt", b"iCCP"):
            payload = b"key\x00\x00" + zlib.compress(bytes(draw(st.integers(0, 50_000))))
        chunks.append(png_chunk(kind, payload, crc_ok=draw(st.booleans()) or True))
    raw_size = draw(st.integers(0, 5000))
    raw = draw(st.sampled_from([b"\x00" * raw_size, bytes(range(256)) * (raw_size // 256)]))
    idat = zlib.compress(raw) if draw(st.booleans()) else draw(st.binary(max_size=200))
    for part in range(draw(st.integers(0, 2)) + 1):
        chunks.append(png_chunk(b"IDAT", idat[part::2] if part else idat))
    if draw(st.booleans()):
        chunks.append(png_chunk(b"IEND", b""))
    return PNG_MAGIC + b"".join(chunks)


@st.composite
def jpeg_files(draw, jpegs: list[bytes]) -> bytes:
    """A real JPEG whose frame header (SOF0) declares another size, precision or component count."""
    data = bytearray(draw(st.sampled_from(jpegs)))
    sof = data.find(b"\xff\xc0")
    if sof >= 0:
        field_at = sof + 4 + draw(st.sampled_from([0, 1, 3, 5]))  # precision, height, width, components
        value = draw(st.sampled_from([0, 1, 3, 4, 255, 0x7FFF, 0xFFFF]))
        width = 1 if field_at in (sof + 4, sof + 9) else 2
        data[field_at : field_at + width] = _interesting_bytes(value, width, "big")
    return bytes(data)


# --- manifest CSV -------------------------------------------------------------------------------------


@st.composite
def csv_files(draw, paths: list[str]) -> Recipe:
    """Manifests with any header (missing, repeated or odd columns, a BOM), rows with too few or
    too many fields, empty fields, quotes, NULs, newlines, huge fields, bad UTF-8 and odd splits."""
    columns = ["image", "voxels", "category", "object_id", "split"]
    header = draw(st.lists(st.sampled_from(columns + ["extra", "", "Image"]), max_size=7))
    if draw(st.booleans()):
        header = columns[: draw(st.integers(3, 5))]
    text_field = (
        st.sampled_from(paths)
        | st.sampled_from(
            ["", " ", ";", "a;;b", "train", "val", "test", "TRAIN", "chair", '"', '""', "x\x00y", "line\nbreak", "é"]
        )
        | st.text(max_size=12)
    )
    long_field = st.integers(1, 300_000).map(lambda n: f"<long {n}>")  # expanded to n letters when built
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.integers(0, len(header) + 2))
        rows.append(
            [draw(text_field | long_field) if draw(st.integers(0, 20)) == 0 else draw(text_field) for _ in range(n)]
        )
    quote = draw(st.sampled_from(["never", "always", "some"]))

    def cell(value: str) -> str:  # quoted by doubling quotes, or raw (then quotes and commas break the row)
        if quote == "always" or (quote == "some" and draw(st.booleans())):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [",".join(cell(v) for v in row) for row in [header] + rows]
    blob = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        blob = b"\xef\xbb\xbf" + blob
    if draw(st.integers(0, 5)) == 0:
        blob += draw(st.sampled_from([b"\xff\xfe", b"\x80abc", b"\x00", b'"unterminated']))
    return lambda: re.sub(rb"<long (\d+)>", lambda m: b"a" * int(m.group(1)), blob)


# --- checkpoints --------------------------------------------------------------------------------------


@st.composite
def checkpoint_files(draw, checkpoints: list[bytes]) -> Recipe:
    """A real Lightning checkpoint with one archive entry damaged (edited, emptied), dropped, renamed,
    repeated or swapped with another, rewritten as a valid zip so torch gets past the CRCs."""
    i = draw(st.integers(0, len(checkpoints) - 1))
    with zipfile.ZipFile(io.BytesIO(checkpoints[i])) as z:
        sizes = [info.file_size for info in z.infolist()]
    pick = draw(st.integers(0, len(sizes) - 1) | st.just(0))  # 0 is data.pkl
    op = draw(st.sampled_from(["edit", "edit", "edit", "drop", "rename", "repeat", "empty", "swap"]))
    arg = {
        "edit": lambda: draw_edits(draw, sizes[pick], head=sizes[pick]),
        "rename": lambda: draw(st.sampled_from(["archive/x", "data.pkl", "archive/data/999", "a/b/c"])),
        "swap": lambda: draw(st.integers(0, len(sizes) - 1)),
    }.get(op, lambda: None)()

    def make() -> bytes:
        with zipfile.ZipFile(io.BytesIO(checkpoints[i])) as z:
            entries = [(info.filename, z.read(info)) for info in z.infolist()]
        name, data = entries[pick]
        if op == "edit":
            entries[pick] = (name, apply_edits(data, arg))
        elif op == "drop":
            del entries[pick]
        elif op == "rename":
            entries[pick] = (arg, data)
        elif op == "repeat":
            entries.append((name, data))
        elif op == "empty":
            entries[pick] = (name, b"")
        else:
            entries[pick], entries[arg] = (name, entries[arg][1]), (entries[arg][0], data)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Duplicate name": a repeated entry is the point
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
                for n, d in entries:
                    z.writestr(n, d)
        return buf.getvalue()

    return make


def tiny_checkpoint(path: Path) -> Path:
    """A real checkpoint, written by Lightning from ``ReconstructionModule`` with a small network
    (hidden size 2: ~0.5 MB instead of 26 MB, so 10,000 mutations stay fast)."""
    import lightning as L

    from r2n2.train.module import ReconstructionModule

    module = ReconstructionModule(
        net={"_target_": "r2n2.models.SeedModel", "hidden_size": 2},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    )
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


# --- the parsers --------------------------------------------------------------------------------------


@dataclass
class Parser:
    """One reader: ``read(path)`` as the project calls it, the file suffix, and ``strategy(seeds)``."""

    suffix: str
    read: Callable[[Path], object]
    strategy: Callable[[dict], st.SearchStrategy[bytes]]
    seeds: Callable[[Path, Path], dict] = field(default=lambda shared, work: {})


def _read_binvox(path):
    from r2n2.data.formats import read_binvox

    return read_binvox(path)


def _read_mat(path):
    from r2n2.data.formats import load_voxels

    return load_voxels(path)


def _read_array(path):
    from r2n2.data.formats import load_voxels

    return load_voxels(path)


def _read_image(path):
    from r2n2.data.formats import read_rgba

    return read_rgba(path, 127)


def _read_manifest(path):
    from r2n2.data.sources import ErrorPolicy, ManifestSource

    records = ManifestSource(os.fspath(path)).records(ErrorPolicy("raise"))
    ManifestSource(os.fspath(path)).records(ErrorPolicy("skip"))
    return records


def _read_checkpoint(path):
    from r2n2.train.checkpoint import load_module

    return load_module(path)


def _binvox_seeds(shared: Path, work: Path) -> dict:
    files = sorted((shared / "binvox").glob("*.binvox")) + sorted((shared / "r2n2-sample").rglob("*.binvox"))
    blobs = [f.read_bytes() for f in files]
    return {"blobs": blobs, "bodies": [b[b.index(b"data\n") + 5 :] for b in blobs]}


def _mat_seeds(shared: Path, work: Path) -> dict:
    return {"blobs": [f.read_bytes() for f in sorted((shared / "mat").glob("*.mat"))]}


def _array_seeds(shared: Path, work: Path) -> dict:
    """The real binvox grids and .mat arrays as np.save / np.savez(_compressed) writes them."""
    from r2n2.data.formats import read_binvox, read_mat

    grids = [read_binvox(f).data for f in sorted((shared / "binvox").glob("*.binvox"))[:2]]
    grids += [read_mat(f) for f in sorted((shared / "mat").glob("*.mat"))[:1]]  # 30^3 int8
    arrays = grids + [grids[0].astype(np.uint8), grids[1].astype(np.float32), np.asfortranarray(grids[0])]
    npys, npzs = [], []
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a)
        npys.append(buf.getvalue())
    for save in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        save(buf, occupancy=grids[0], label=np.array([3]))
        npzs.append(buf.getvalue())
    return {"npys": npys, "npzs": npzs}


def _image_seeds(shared: Path, work: Path) -> dict:
    from PIL import Image

    pngs = sorted((shared / "photos").glob("*.png")) + sorted((shared / "r2n2-sample").rglob("0[0-2].png"))
    blobs = [f.read_bytes() for f in pngs]
    jpegs = []
    for f in pngs[:4]:  # the real photos and renderings as JPEG (what a phone would give)
        buf = io.BytesIO()
        Image.open(f).convert("RGB").save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    return {"blobs": blobs + jpegs, "jpegs": jpegs}


def _csv_seeds(shared: Path, work: Path) -> dict:
    photos = sorted((shared / "photos").glob("*.png"))
    mats = sorted((shared / "mat").glob("*.mat"))
    rows = ["image,voxels,category,object_id,split"]
    rows += [
        f"{p};{photos[(i + 1) % 3]},{mats[i % 3]},chair,obj{i % 2},{['train', 'val', 'test'][i % 3]}"
        for i, p in enumerate(photos)
    ]
    rows += [f"{p},{mats[0]},chair,,," for p in photos]
    blob = ("\n".join(rows) + "\n").encode()
    return {
        "blobs": [blob, blob.replace(b",", b";").replace(b";;", b",")],
        "paths": [os.fspath(p) for p in photos + mats],
    }


def _checkpoint_seeds(shared: Path, work: Path) -> dict:
    return {"blobs": [tiny_checkpoint(work / "real.ckpt").read_bytes()]}


PARSERS: dict[str, Parser] = {
    "binvox": Parser(".binvox", _read_binvox, lambda s: mutated(s["blobs"]) | binvox_files(s["bodies"]), _binvox_seeds),
    "mat": Parser(
        ".mat",
        _read_mat,
        lambda s: mutated(s["blobs"]) | mat_handmade() | mat_savemat() | then_mutated(mat_savemat()),
        _mat_seeds,
    ),
    "npy": Parser(
        ".npy", _read_array, lambda s: mutated(s["npys"]) | npy_handmade() | then_mutated(npy_handmade()), _array_seeds
    ),
    "npz": Parser(
        ".npz",
        _read_array,
        lambda s: mutated(s["npzs"]) | npz_files(s["npys"]) | then_mutated(npz_files(s["npys"])),
        _array_seeds,
    ),
    "image": Parser(
        ".png",
        _read_image,
        lambda s: mutated(s["blobs"]) | png_files() | jpeg_files(s["jpegs"]) | then_mutated(jpeg_files(s["jpegs"])),
        _image_seeds,
    ),
    "csv": Parser(".csv", _read_manifest, lambda s: mutated(s["blobs"]) | csv_files(s["paths"]), _csv_seeds),
    "checkpoint": Parser(
        ".ckpt", _read_checkpoint, lambda s: mutated(s["blobs"]) | checkpoint_files(s["blobs"]), _checkpoint_seeds
    ),
}


# --- running and counting -----------------------------------------------------------------------------


class Hang(BaseException):
    """An input took longer than the timeout (BaseException: no reader's ``except Exception`` eats it)."""


def _on_alarm(signum, frame):
    raise Hang()


def classify(read: Callable[[Path], object], path: Path, timeout: float = 10.0) -> tuple[str, str]:
    """Read ``path``; return ``("clean" | "accepted" | "escape", detail)``."""
    from r2n2.data.errors import DataError
    from r2n2.train.checkpoint import CheckpointError

    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        read(path)
        return "accepted", ""
    except Hang:
        return "escape", f"hang: more than {timeout} s"
    except (DataError, CheckpointError) as e:
        msg = str(e)
        if not msg.startswith(f"{path}: "):
            return "escape", f"{type(e).__name__} not naming the file: {msg[:200]}"
        if "MemoryError" in msg:
            return "escape", f"huge allocation: {msg[:200]}"
        return "clean", msg
    except Exception as e:  # noqa: BLE001 - counting every escape is the point
        tb = e.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        return "escape", f"{type(e).__name__} at {where}: {str(e)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fuzz_settings(examples: int) -> settings:
    """Deterministic (derandomized, no example database), generation only, no deadline."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_parser(
    name: str, examples: int, shared: Path, work: Path, timeout: float, rss_limit: float, save: Path | None = None
) -> dict:
    """Feed ``examples`` generated inputs to one parser and count the outcomes."""
    parser = PARSERS[name]
    seeds = parser.seeds(shared, work)
    path = work / f"input{parser.suffix}"
    _read_warm = path.with_name("warm" + parser.suffix)
    _read_warm.write_bytes(b"")
    classify(parser.read, _read_warm, timeout)  # imports and first-call set-up are not the inputs' cost
    start_rss = _peak_rss_mib()
    counts, escapes, slowest = Counter(), {}, 0.0

    @fuzz_settings(examples)
    @given(parser.strategy(seeds))
    def feed(value: bytes | Recipe) -> None:
        nonlocal slowest
        blob = build(value)
        path.write_bytes(blob)
        t0, peak = time.perf_counter(), _peak_rss_mib()
        outcome, detail = classify(parser.read, path, timeout)
        slowest = max(slowest, time.perf_counter() - t0)
        # this input raised the peak RSS (a monotonic figure) beyond the limit
        if outcome != "escape" and _peak_rss_mib() > max(peak, start_rss + rss_limit):
            outcome, detail = "escape", f"huge allocation: peak RSS {_peak_rss_mib():.0f} MiB"
        counts[outcome] += 1
        if outcome == "escape":
            key = detail.split(":")[0] + detail.split(" at ")[-1].split(":")[0]
            if key not in escapes:
                escapes[key] = detail
                if save is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"{name}-{len(escapes)}{parser.suffix}").write_bytes(blob)

    feed()
    return {
        "parser": name,
        "inputs": sum(counts.values()),
        "clean": counts["clean"],
        "accepted": counts["accepted"],
        "escapes": counts["escape"],
        "max_time_s": slowest,
        "max_rss_mib": _peak_rss_mib(),
        "start_rss_mib": start_rss,
        "kinds": sorted(escapes.values()),
    }


def _child(args) -> None:
    """Run one parser in this process, under an address-space limit, and print its row as JSON."""
    import faulthandler

    import r2n2.data.formats  # noqa: F401
    import r2n2.train.checkpoint  # noqa: F401 - import torch before measuring the start-up size

    faulthandler.enable()  # a crash in a C extension prints where it happened
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (6 << 30), resource.RLIM_INFINITY))
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{args.child}-") as work:
        row = run_parser(
            args.child,
            args.examples,
            Path(args.shared),
            Path(work),
            args.timeout,
            args.rss_limit,
            Path(args.save_escapes) if args.save_escapes else None,
        )
    print("ROW " + json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=10_000, help="inputs per parser (default 10,000)")
    ap.add_argument("--parsers", nargs="+", choices=list(PARSERS), default=list(PARSERS))
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    ap.add_argument("--rss-limit", type=float, default=512.0, help="MiB of RSS growth that counts as huge")
    ap.add_argument("--shared", default=os.fspath(SHARED), help="the real data samples (../shared/data)")
    ap.add_argument("--save-escapes", default=None, help="folder to write one input per kind of escape")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    from r2n2.utils.machine import describe_machine

    print(f"fuzzing {', '.join(args.parsers)}: {args.examples} inputs each; {describe_machine()}")
    print(
        f"{'parser':<11} {'inputs':>7} {'clean errors':>13} {'accepted':>9} {'escapes':>8} {'max time':>9} "
        f"{'max RSS':>9}"
    )
    rows = []
    for name in args.parsers:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--examples",
            str(args.examples),
            "--timeout",
            str(args.timeout),
            "--rss-limit",
            str(args.rss_limit),
            "--shared",
            args.shared,
        ]
        if args.save_escapes:
            cmd += ["--save-escapes", args.save_escapes]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode != 0 or not found:  # the process itself died: a crash is an escape too
            stack = proc.stderr[proc.stderr.find("Fatal Python error") :][:1500] or proc.stderr[-1500:]
            row = {
                "parser": name,
                "inputs": 0,
                "clean": 0,
                "accepted": 0,
                "escapes": 1,
                "max_time_s": 0.0,
                "max_rss_mib": 0.0,
                "kinds": [
                    f"process died ({proc.returncode}); the input is "
                    f"{tempfile.gettempdir()}/fuzz-{name}-*/input{PARSERS[name].suffix}:\n{stack}"
                ],
            }
        else:
            row = json.loads(found[-1][4:])
        rows.append(row)
        print(
            f"{name:<11} {row['inputs']:>7} {row['clean']:>13} {row['accepted']:>9} {row['escapes']:>8} "
            f"{row['max_time_s'] * 1000:>7.0f}ms {row['max_rss_mib']:>6.0f}MiB",
            flush=True,
        )
    for row in rows:
        for kind in row["kinds"]:
            print(f"  escape ({row['parser']}): {kind}")
    sys.exit(1 if any(r["escapes"] for r in rows) else 0)


if __name__ == "__main__":
    main()

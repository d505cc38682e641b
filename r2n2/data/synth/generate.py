"""Write a synthetic ShapeNet in exactly the 3D-R2N2 layout (REFERENCE.md, "Data layout"):

    <root>/ShapeNetRendering/<synset>/<object_id>/rendering/{00..NN}.png   137x137 RGBA
    <root>/ShapeNetRendering/<synset>/<object_id>/rendering/rendering_metadata.txt
    <root>/ShapeNetRendering/<synset>/<object_id>/rendering/renderings.txt
    <root>/ShapeNetVox<R>/<synset>/<object_id>/model.binvox                  solid R^3 (R = 32 by default)
    <root>/ShapeNet.json   Pix2Vox's taxonomy and object-level train/val/test split
    <root>/synth.json      the generator's parameters and version

Deterministic: object ``index`` of category ``synset`` draws everything from
``SeedSequence([seed, int(synset), index])`` (its shape and its views from two spawned children), so
the output is byte-identical whatever the number of workers. Atomic: everything is written into a
temporary folder beside ``root`` and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from r2n2.data.camera import AZIMUTH_RANGE, DIST_RATIO_RANGE, ELEVATION_RANGE, View
from r2n2.data.synth.render import SUPERSAMPLE, render
from r2n2.data.synth.shapes import CATEGORIES, make_object
from r2n2.data.synth.voxelize import GRID
from r2n2.utils.atomic import atomic_write

# Bump when the output for given parameters changes (shapes, renderer, voxeliser, layout). A set is also
# regenerated when the code of GENERATOR_MODULES changes (generator_fingerprint), bumped or not.
GENERATOR_VERSION = 1
_HERE = Path(__file__).resolve().parent
# every module whose code shapes the files written: this package, the camera, the binvox writer
GENERATOR_MODULES = tuple(sorted(str(p) for p in _HERE.glob("*.py") if p.name != "__init__.py")) + (
    str(_HERE.parent / "camera.py"),
    str(_HERE.parent / "categories.py"),
    str(_HERE.parent / "formats" / "binvox.py"),
)
# ShapeNetRendering has 24 views per object; the synthetic set spends the same rendering (768 images per
# category) on 4x the objects, 128 x 6 views instead of 32 x 24: more shapes, not more views of each, is
# what lifts the model above the category prior (docs/ablation.md, "The 2-minute GPU budget").
DEFAULT_OBJECTS_PER_CATEGORY = 128
DEFAULT_VIEWS = 6
# Object-level split per category: Pix2Vox's ShapeNet.json is 30,643 / 4,371 / 8,770 objects (70/10/20)
SPLIT_TENTHS = {"train": 7, "val": 1}  # the test split takes the rest
# Pix2Vox's "baseline" entry holds 3D-R2N2's published IoU per view count; unknown for synthetic data
BASELINE = {f"{k}-view": 0.0 for k in range(1, 6)}


def resolve_categories(categories: Iterable[str] | None) -> list[str]:
    """Synset ids (in CATEGORIES order) for a list of synset ids and/or names; all 13 for None."""
    if categories is None:
        return list(CATEGORIES)
    by_name = {name: synset for synset, name in CATEGORIES.items()}
    wanted = set()
    for c in categories:
        c = str(c).strip()
        if c not in CATEGORIES and c not in by_name:
            raise ValueError(f"unknown category {c!r}; use synset ids or names from {dict(CATEGORIES)}")
        wanted.add(by_name.get(c, c))
    return [s for s in CATEGORIES if s in wanted]


def object_id(seed: int, synset: str, index: int) -> str:
    """A 32-hex-digit id like ShapeNet's model ids, fixed by (seed, synset, index)."""
    return hashlib.md5(f"r2n2-synth:{seed}:{synset}:{index}".encode()).hexdigest()


def object_rngs(seed: int, synset: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for an object's shape and for its views (so the view count does not
    change the shape)."""
    shape_seq, view_seq = np.random.SeedSequence([seed, int(synset), index]).spawn(2)
    return np.random.default_rng(shape_seq), np.random.default_rng(view_seq)


def _round12(x: float) -> float:
    # 12 significant digits, as in the real rendering_metadata.txt; the file then reproduces the view exactly
    return float(f"{x:.12g}")


def sample_views(rng: np.random.Generator, n: int) -> list[View]:
    """``n`` R2N2 viewpoints drawn uniformly from the ranges of ShapeNetRendering (camera.py)."""
    draws = rng.uniform(size=(n, 3))
    lows = np.array([AZIMUTH_RANGE[0], ELEVATION_RANGE[0], DIST_RATIO_RANGE[0]])
    highs = np.array([AZIMUTH_RANGE[1], ELEVATION_RANGE[1], DIST_RATIO_RANGE[1]])
    values = lows + draws * (highs - lows)
    return [View(*(_round12(float(v)) for v in row)) for row in values]


def split_indices(seed: int, synset: str, n: int) -> dict[str, list[int]]:
    """Object indices of each split for one category: floor(70%) train, floor(10%) val, the rest
    test, assigned by a seeded permutation; every split gets at least one object when n >= 3
    (train first, then test), so small datasets still have all three."""
    order = np.random.default_rng([seed, int(synset), n, 1]).permutation(n).tolist()
    n_val = max(n * SPLIT_TENTHS["val"] // 10, 1 if n >= 3 else 0)
    n_train = max(min(n, 1), min(n * SPLIT_TENTHS["train"] // 10, n - n_val - 1))
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def voxel_dir(resolution: int) -> str:
    """The voxel folder of an R^3 set: ShapeNetVox32 (the 3D-R2N2 release's name) at 32, ShapeNetVox64, ..."""
    return f"ShapeNetVox{resolution}"


def write_renderings(root: Path, seed: int, synset: str, index: int, views: int, resolution: int = GRID) -> tuple:
    """Generate object ``index`` of ``synset`` and write its renderings under ``root``. Runs in the
    worker processes. Returns ``(object_id, packed, translate, scale)`` for ``write_voxels``, ``packed``
    being ``np.packbits`` of the (R, R, R) bool voxels (4 KiB at 32^3 to send back instead of 32)."""
    oid = object_id(seed, synset, index)
    shape_rng, view_rng = object_rngs(seed, synset, index)
    obj = make_object(synset, shape_rng, resolution)
    folder = root / "ShapeNetRendering" / synset / oid / "rendering"
    folder.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(views - 1)))
    names, lines = [], []
    for i, view in enumerate(sample_views(view_rng, views)):
        name = f"{i:0{width}d}.png"
        Image.fromarray(render(obj, view), "RGBA").save(folder / name, format="PNG")
        names.append(name)
        lines.append(view.metadata_line())
    (folder / "renderings.txt").write_text("".join(f"{n}\n" for n in names))
    (folder / "rendering_metadata.txt").write_text("".join(f"{line}\n" for line in lines))
    return oid, np.packbits(obj.voxels), tuple(float(t) for t in obj.translate), obj.scale


def _render_task(task: tuple) -> tuple:
    return (task[2],) + write_renderings(*task)


def write_voxels(
    root: Path, synset: str, oid: str, packed: np.ndarray, translate: tuple, scale: float, resolution: int = GRID
) -> None:
    """Write ``model.binvox`` (R^3, R = ``resolution``) like ShapeNetVox32: translate = bounding-box
    minimum, scale = grid side."""
    # imported here, not at module level: r2n2.data.formats pulls in torch (~2 s per worker process),
    # so the parent writes the (small) voxel files and the workers only render
    from r2n2.data.formats.binvox import write_binvox

    r = resolution
    voxels = np.unpackbits(packed, count=r**3).astype(bool).reshape(r, r, r)
    write_binvox(root / voxel_dir(r) / synset / oid / "model.binvox", voxels, translate=translate, scale=scale)


def generator_fingerprint() -> str:
    """SHA-256 of the source of ``GENERATOR_MODULES``: any change to the generator's code changes it."""
    h = hashlib.sha256()
    for path in GENERATOR_MODULES:
        h.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


def parameters(
    objects_per_category: int, views: int, seed: int, synsets: Sequence[str], resolution: int = GRID
) -> dict:
    """The contents of synth.json: everything that determines the output (the generator's version and
    code, and its parameters; not the worker count). A set whose synth.json differs is regenerated."""
    return {
        "generator": "r2n2.data.synth",
        "version": GENERATOR_VERSION,
        "generator_code": generator_fingerprint(),
        "seed": seed,
        "objects_per_category": objects_per_category,
        "views": views,
        "categories": list(synsets),
        "image_size": 137,
        "supersample": SUPERSAMPLE,
        "voxel_grid": resolution,
        "split": {"train": 0.7, "val": 0.1, "test": 0.2},
    }


def _taxonomy(seed: int, synsets: Sequence[str], n: int) -> list[dict]:
    """Pix2Vox's ShapeNet.json: one entry per category with object ids per split."""
    entries = []
    for synset in synsets:
        split = split_indices(seed, synset, n)
        entry = {"taxonomy_id": synset, "taxonomy_name": CATEGORIES[synset], "baseline": dict(BASELINE)}
        entry.update({name: [object_id(seed, synset, i) for i in idx] for name, idx in split.items()})
        entries.append(entry)
    return entries


def _pool_context():
    # forkserver: workers start from a clean process (no inherited threads from torch / Lightning)
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def generate_dataset(
    root: str | os.PathLike,
    objects_per_category: int = DEFAULT_OBJECTS_PER_CATEGORY,
    views: int = DEFAULT_VIEWS,
    seed: int = 0,
    categories: Iterable[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    resolution: int = GRID,
) -> Path:
    """Generate the synthetic ShapeNet into ``root`` and return it as a Path.

    categories: synset ids or names (default: all 13); workers: processes (default ``os.cpu_count()``).
    resolution: R, the side of the solid voxel grids (``ShapeNetVox<R>/``): 32 (default), 64 or 128; the
    renderings do not depend on it.
    If ``root`` already holds a dataset made with the same parameters and generator (``synth.json``) it
    is returned as is; another non-empty ``root`` raises ``FileExistsError`` unless ``overwrite``. The
    new set is built beside ``root`` and swapped in when complete, so until then the old one stays
    usable. A run that fails is cleaned up; one killed outright leaves only a hidden
    ``.<name>.tmp-*`` folder beside ``root`` (safe to delete), never a partial ``root``; one killed
    during the swap leaves the old set as ``.<name>.old-*``, which the next call puts back.
    """
    if objects_per_category < 1 or views < 1 or resolution < 1:
        raise ValueError(
            f"need objects_per_category, views and resolution >= 1, got {objects_per_category}, {views}, {resolution}"
        )
    root = Path(root).expanduser().absolute()
    synsets = resolve_categories(categories)
    params = parameters(objects_per_category, views, seed, synsets, resolution)
    _recover_swap(root)
    if made_with(root) == params:
        return root
    if root.exists() and any(root.iterdir()) and not overwrite:
        before = made_with(root)
        if before is not None:
            changed = sorted(k for k in params if before.get(k) != params[k])
            raise FileExistsError(
                f"{root} holds a synthetic dataset made with another {', '.join(changed)}; "
                "pass overwrite=True (r2n2-synth --overwrite) to regenerate it"
            )
        raise FileExistsError(f"{root} exists and is not this synthetic dataset; pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        tasks = [(tmp, seed, s, i, views, resolution) for s in synsets for i in range(objects_per_category)]
        workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
        bar = tqdm(total=len(tasks), desc=f"generating {root.name}", unit="object", disable=len(tasks) < 50)
        if workers == 1:
            for task in tasks:
                write_voxels(tmp, *_render_task(task), resolution)
                bar.update()
        else:
            with _pool_context().Pool(workers) as pool:
                for result in pool.imap_unordered(_render_task, tasks, chunksize=1):
                    write_voxels(tmp, *result, resolution)
                    bar.update()
        bar.close()
        with atomic_write(tmp / "ShapeNet.json", "w") as f:
            json.dump(_taxonomy(seed, synsets, objects_per_category), f, indent=2)
        with atomic_write(tmp / "synth.json", "w") as f:
            json.dump(params, f, indent=2)
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def made_with(root: Path) -> dict | None:
    """The parameters in ``root/synth.json``, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((root / "synth.json").read_text())
    except (OSError, ValueError):
        return None


def _recover_swap(root: Path) -> None:
    """Undo a swap that a kill interrupted: put a complete old set back if ``root`` is missing, and
    delete old sets left beside a ``root`` that exists."""
    olds = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
    if not root.exists() and olds:
        os.rename(olds.pop(), root)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def _move_into_place(tmp: Path, root: Path, attempts: int = 3) -> None:
    """Rename the finished ``tmp`` folder to ``root`` (replacing an empty or, by request, old one).

    Another process may swap its own set in at the same time: if ``root`` then already holds a set
    with the same synth.json, ``tmp`` is dropped; if it holds another, the swap is tried again.
    """
    for attempt in range(attempts):
        old = None
        if root.exists():
            if any(root.iterdir()):
                old = root.parent / f".{root.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(root, old)
            else:
                root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:
            if old is not None and not root.exists():
                os.rename(old, root)  # not swapped: the old set goes back
            elif old is not None:
                shutil.rmtree(old, ignore_errors=True)
            if made_with(root) is not None and made_with(root) == made_with(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if attempt == attempts - 1:
                raise
            continue
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return

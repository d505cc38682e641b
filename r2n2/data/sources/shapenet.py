"""The 3D-R2N2 ShapeNet layout, as downloaded from the 3D-R2N2 project page::

    <root>/ShapeNetRendering/<synset>/<model_id>/rendering/{00..23}.png, renderings.txt
    <root>/ShapeNetVox32/<synset>/<model_id>/model.binvox

with an optional taxonomy file in Pix2Vox's ``ShapeNet.json`` format (a list of
``{"taxonomy_id", "taxonomy_name", "train": [...], "val": [...], "test": [...]}``) that fixes the
official object-level split and the category names.

The release's grids are 32^3 (ShapeNetVox32): a finer ``data.resolution`` is refused at ``prepare``
rather than pooled up, which would only repeat its voxels. Other voxel folders (``voxel_dir``, e.g.
the synthetic generator's ``ShapeNetVox64``) are read at their own size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from r2n2.data.categories import R2N2_CATEGORIES, category_filter
from r2n2.data.errors import DataError
from r2n2.data.formats import RESOLUTION
from r2n2.data.sources.base import SPLITS, ErrorPolicy, ObjectRecord, stamp

# the 3D-R2N2 release's voxel folder and the side of its grids (ShapeNetVox32.tgz: 32^3 binvox)
RELEASE_VOXEL_DIR = "ShapeNetVox32"
RELEASE_RESOLUTION = 32


class ShapeNetSource:
    """ShapeNetRendering + ShapeNetVox32 under ``root``.

    taxonomy: path of a Pix2Vox-style ShapeNet.json (relative paths are taken under ``root``), or
        None: then every object found is used and the split is drawn per object from a seed.
    categories: synset ids or names to keep (None = all).
    """

    voxel_key = None
    resolution = RESOLUTION

    def __init__(
        self,
        root: str,
        taxonomy: str | None = None,
        categories: list[str] | None = None,
        rendering_dir: str = "ShapeNetRendering",
        voxel_dir: str = RELEASE_VOXEL_DIR,
    ):
        self.root = Path(root).expanduser()
        self.taxonomy = None if taxonomy is None else self.root / Path(taxonomy).expanduser()
        self.categories = category_filter(categories)
        self.rendering_dir, self.voxel_dir = rendering_dir, voxel_dir

    def prepare(self, sizes: dict[str, int | None]) -> None:
        if not (self.root / self.rendering_dir).is_dir():
            raise DataError(
                self.root / self.rendering_dir,
                f"no {self.rendering_dir} folder: set data.source.root to the folder that holds "
                f"{self.rendering_dir}/ and {self.voxel_dir}/",
            )
        if self.voxel_dir == RELEASE_VOXEL_DIR and self.resolution > RELEASE_RESOLUTION:
            raise DataError(
                self.root / self.voxel_dir,
                f"the 3D-R2N2 release holds {RELEASE_RESOLUTION}^3 grids; data.resolution="
                f"{self.resolution} would only repeat their voxels: use data.resolution="
                f"{RELEASE_RESOLUTION}, or finer grids (data=synthetic, data=pix3d, data=manifest)",
            )

    def describe(self) -> dict:
        return {
            "kind": "shapenet",
            "root": str(self.root.resolve()),
            "taxonomy": None if self.taxonomy is None else str(self.taxonomy.resolve()),
            "categories": self.categories,
        }

    def _keep(self, synset: str, name: str) -> bool:
        return self.categories is None or synset in self.categories or name in self.categories

    def _listing(self) -> list[tuple[str, str, str, str | None]]:
        """(synset, name, model_id, split) for every object, from the taxonomy or the folders."""
        if self.taxonomy is not None:
            try:
                entries = json.loads(self.taxonomy.read_bytes())
            except FileNotFoundError:
                raise DataError(self.taxonomy, "taxonomy file not found") from None
            except OSError as e:
                raise DataError(self.taxonomy, f"taxonomy file unreadable ({e.strerror or e})") from None
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise DataError(self.taxonomy, f"taxonomy is not valid JSON ({e})") from None
            if not isinstance(entries, list):
                raise DataError(
                    self.taxonomy,
                    f"not in Pix2Vox ShapeNet.json format (a JSON {type(entries).__name__}, "
                    "expected a list of categories)",
                )
            out = []
            for entry in entries:
                try:
                    synset, name = str(entry["taxonomy_id"]), str(entry["taxonomy_name"])
                    for split in SPLITS:
                        models = entry.get(split, [])
                        if not isinstance(models, list):
                            raise TypeError(f"{split!r} is not a list of model ids")
                        out += [(synset, name, str(m), split) for m in models]
                except (KeyError, TypeError) as e:
                    raise DataError(
                        self.taxonomy, f"not in Pix2Vox ShapeNet.json format ({e!r} in {entry!r:.80})"
                    ) from None
            return _once_per_object(out, self.taxonomy)
        base = self.root / self.rendering_dir
        return [
            (syn.name, R2N2_CATEGORIES.get(syn.name, syn.name), obj.name, None)
            for syn in sorted(p for p in base.iterdir() if p.is_dir())
            for obj in sorted(p for p in syn.iterdir() if p.is_dir())
        ]

    def fingerprint(self, sizes: dict[str, int | None] | None = None) -> str:
        """SHA-256 of the listing (taxonomy or folders) and the times of each object's two folders
        (``rendering/`` and the voxel folder): a file added, removed or replaced by a rename (how
        archives extract and most tools save) changes its folder's time. It stats ~2 folders per object,
        never the 24 renderings (0.5 s for the full release where listing them takes ~9 s). A file
        rewritten in place leaves its folder's time alone: remove the cache after such an edit."""
        h = hashlib.sha256()
        if self.taxonomy is not None:
            h.update(stamp(self.taxonomy).encode())
        renderings = os.path.join(self.root, self.rendering_dir, "")  # plain strings: pathlib cost 3x the stats
        voxels = os.path.join(self.root, self.voxel_dir, "")
        lines = [
            f"{synset}/{model}\0{name}\0{split}\0{stamp(f'{renderings}{synset}/{model}/rendering')}\0"
            f"{stamp(f'{voxels}{synset}/{model}')}\n"
            for synset, name, model, split in self._listing()
            if self._keep(synset, name)
        ]
        h.update("".join(lines).encode())
        return h.hexdigest()

    def records(self, errors: ErrorPolicy, sizes: dict[str, int | None] | None = None) -> list[ObjectRecord]:
        out = []
        for synset, name, model, split in self._listing():
            if not self._keep(synset, name):
                continue
            folder = self.root / self.rendering_dir / synset / model / "rendering"
            try:
                images = _view_files(folder)
            except DataError as e:
                errors.handle(e)
                continue
            voxels = self.root / self.voxel_dir / synset / model / "model.binvox"
            out.append(ObjectRecord(f"{synset}/{model}", name, images, os.fspath(voxels), split))
        return out


def _once_per_object(listing: list[tuple[str, str, str, str | None]], taxonomy: Path) -> list:
    """``listing`` with repeats within one split dropped; an object listed in two splits would leak
    between them, so it is refused with a ``DataError`` naming every such object and its splits."""
    splits: dict[str, list[str]] = {}
    out = []
    for synset, name, model, split in listing:
        seen = splits.setdefault(f"{synset}/{model}", [])
        if split not in seen:
            seen.append(split)
            if len(seen) == 1:
                out.append((synset, name, model, split))
    leaks = [f"{oid} ({', '.join(s)})" for oid, s in splits.items() if len(s) > 1]
    if leaks:
        shown = "; ".join(leaks[:10]) + (f"; +{len(leaks) - 10} more" if len(leaks) > 10 else "")
        raise DataError(taxonomy, f"{len(leaks)} object(s) listed in more than one split: {shown}")
    return out


def _view_files(folder: Path) -> tuple[str, ...]:
    """The view images of one object: as listed in renderings.txt, else every PNG in the folder."""
    listing = folder / "renderings.txt"
    if listing.is_file():
        names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
    elif folder.is_dir():
        names = sorted(p.name for p in folder.glob("*.png"))
    else:
        raise DataError(folder, "rendering folder not found")
    if not names:
        raise DataError(folder, "no views (empty renderings.txt and no PNG files)")
    return tuple(os.fspath(folder / n) for n in names)

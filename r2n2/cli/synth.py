"""``r2n2-synth``: generate the built-in synthetic ShapeNet (``r2n2.data.synth.generate_dataset``).

r2n2-synth --out data/synth --objects-per-category 32 --views 24 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from r2n2.data.formats import RESOLUTION, RESOLUTIONS
from r2n2.data.synth import CATEGORIES, generate_dataset
from r2n2.data.synth.generate import DEFAULT_OBJECTS_PER_CATEGORY, DEFAULT_VIEWS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r2n2-synth",
        description="Generate the built-in synthetic ShapeNet in the 3D-R2N2 layout "
        "(ShapeNetRendering/, ShapeNetVox<R>/, ShapeNet.json, synth.json).",
    )
    parser.add_argument("--out", required=True, help="dataset folder to create (written atomically)")
    parser.add_argument(
        "--objects-per-category",
        type=int,
        default=DEFAULT_OBJECTS_PER_CATEGORY,
        help=f"objects per category (default {DEFAULT_OBJECTS_PER_CATEGORY})",
    )
    parser.add_argument(
        "--views", type=int, default=DEFAULT_VIEWS, help=f"renderings per object (default {DEFAULT_VIEWS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--resolution",
        type=int,
        choices=RESOLUTIONS,
        default=RESOLUTION,
        help=f"side R of the solid R^3 voxel grids, written to ShapeNetVox<R>/ (default {RESOLUTION})",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: os.cpu_count())")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=None,
        metavar="CAT",
        help="synset ids or names, space or comma separated (default: all 13: " + ", ".join(CATEGORIES.values()) + ")",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, different dataset")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cats = None if args.categories is None else [c for arg in args.categories for c in arg.split(",") if c]
    start = time.perf_counter()
    try:
        root = generate_dataset(
            args.out,
            objects_per_category=args.objects_per_category,
            views=args.views,
            seed=args.seed,
            categories=cats,
            workers=args.workers,
            overwrite=args.overwrite,
            resolution=args.resolution,
        )
    except (ValueError, FileExistsError) as err:
        print(f"r2n2-synth: error: {err}", file=sys.stderr)
        return 2
    print(
        f"synthetic ShapeNet in {root} ({time.perf_counter() - start:.1f} s, {args.workers or os.cpu_count()} workers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``r2n2-predict``: reconstruct a 3D shape from your own photos of one object.

    r2n2-predict --ckpt outputs/train/<run>/checkpoints/best.ckpt photo.jpg [more.jpg ...] --out pred/

Any PNG/JPEG, any size, RGB or RGBA: each is padded or cropped to a square around the object,
resized to 127x127 and normalised exactly as in training; several images are fed as views of one
object. Writes prediction.npy (probabilities, (32, 32, 32) float32 in (x, y, z) order, y up),
prediction.binvox (thresholded; readable by binvox_rw and viewvox), prediction.obj (marching-cubes
mesh of the unit cube centred at the origin) and prediction.png (inputs and the 3D prediction); with
--html also prediction.html, a self-contained page showing them as rotatable 3D voxels. --ckpt takes a
training checkpoint or a weights file written by r2n2-export.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

from r2n2.data.errors import DataError
from r2n2.evaluation.metrics import THRESHOLD
from r2n2.train.checkpoint import CheckpointError
from r2n2.utils.atomic import atomic_write


def frame_views(paths: list[str], size: int = 127) -> torch.Tensor:
    """Photos -> ``rgba: (1, V, size, size, 4) uint8``, each squared around its object and resized."""
    from PIL import Image

    from r2n2.data.formats import read_rgba
    from r2n2.data.transforms import frame_object

    views = []
    for p in paths:
        square = frame_object(read_rgba(p))
        im = Image.fromarray(square, "RGBA").convert("RGBa").resize((size, size), Image.BILINEAR).convert("RGBA")
        views.append(np.asarray(im))
    return torch.from_numpy(np.stack(views))[None]


def load_views(paths: list[str], size: int = 127) -> torch.Tensor:
    """Photos -> ``images: (1, V, 3, size, size)`` normalised like the training data."""
    from r2n2.data.transforms import to_images

    return to_images(frame_views(paths, size))


def write_obj(path: Path, probs: np.ndarray, threshold: float) -> int:
    """Marching-cubes mesh of ``probs >= threshold`` (scikit-image), vertices in the unit cube centred
    at the origin, (x, y, z) with y up. Returns the number of faces (0: nothing above threshold)."""
    from skimage.measure import marching_cubes

    padded = np.pad(probs.astype(np.float32), 1)
    if padded.max() < threshold:
        faces, verts = np.zeros((0, 3), int), np.zeros((0, 3))
    else:
        verts, faces, _, _ = marching_cubes(padded, level=threshold)
        verts = (verts - 1 + 0.5) / probs.shape[0] - 0.5  # padded index -> voxel-centre coordinates
    buf = io.StringIO()
    buf.write(f"# r2n2-predict: marching cubes at p = {threshold:g}\n")
    np.savetxt(buf, verts, fmt="v %.5f %.5f %.5f")
    np.savetxt(buf, faces[:, ::-1] + 1, fmt="f %d %d %d")  # 1-based, outward-facing winding
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
    return len(faces)


def predict(ckpt: str, images: list[str], out: str, threshold: float = THRESHOLD, html: bool = False) -> dict:
    from r2n2.data.formats.binvox import Binvox, write_binvox
    from r2n2.data.transforms import to_images
    from r2n2.export import load_network
    from r2n2.vis.figures import prediction_figure, save

    net, info = load_network(ckpt)  # a training checkpoint or an r2n2-export weights file
    rgba = frame_views(images, info["image_size"])
    views = to_images(rgba)
    with torch.no_grad():
        probs = torch.sigmoid(net(views).float())[0].numpy()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, probs.astype(np.float32))
    with atomic_write(out_dir / "prediction.npy") as f:
        f.write(buf.getvalue())
    # the grid (any R) is a cube of side 1 centred at the origin, as ShapeNetVox32 (binvox 'translate' is its corner)
    write_binvox(out_dir / "prediction.binvox", Binvox(probs >= threshold, translate=(-0.5, -0.5, -0.5), scale=1.0))
    faces = write_obj(out_dir / "prediction.obj", probs, threshold)
    save(prediction_figure(views[0], probs, threshold, [Path(p).name for p in images]), out_dir / "prediction.png")
    if html:
        from r2n2.vis import viewer

        rows = viewer.samples([", ".join(Path(p).name for p in images)], rgba, None, probs[None], threshold)
        viewer.write_page(out_dir / "prediction.html", rows, "r2n2-predict", f"Model: {ckpt}.")
    return {"occupied": int((probs >= threshold).sum()), "faces": faces, "out": str(out_dir)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="r2n2-predict", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ckpt", required=True, help="a training checkpoint (.ckpt) or an r2n2-export weights file")
    ap.add_argument("images", nargs="+", help="photos of one object (PNG/JPEG, any size)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help=f"occupancy threshold (default {THRESHOLD})")
    ap.add_argument(
        "--html",
        action="store_true",
        help="also write prediction.html: inputs and the prediction as rotatable 3D voxels",
    )
    args = ap.parse_args(argv)
    try:
        info = predict(args.ckpt, args.images, args.out, args.threshold, args.html)
    except (CheckpointError, DataError) as e:
        print(f"r2n2-predict: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"[r2n2-predict] {len(args.images)} view(s): {info['occupied']} occupied voxels, "
        f"{info['faces']} mesh faces -> {info['out']}/prediction.{{npy,binvox,obj,png{',html' if args.html else ''}}}"
    )


if __name__ == "__main__":
    main()

"""Images: PNG and JPEG of any size and mode, read as RGBA uint8, and alpha compositing.

3D-R2N2 composites its transparent renderings on a background colour: 240 at test time, a random
grey in [225, 255] at training time.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from r2n2.data.errors import DataError
from r2n2.data.formats.limits import MAX_IMAGE_PIXELS

# the formats read (ShapeNetRendering is PNG, photos are PNG or JPEG); PIL's other decoders are not tried
FORMATS = ("PNG", "JPEG")
# 3D-R2N2: background colour at test time, and its random range at training time
EVAL_BACKGROUND = 240
TRAIN_BACKGROUND_RANGE = (225, 255)


def read_rgba(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Read an image as ``(H, W, 4) uint8`` RGBA, optionally resized to ``(size, size)``.

    An EXIF Orientation tag (phone photos) is applied, so ``(H, W)`` is the upright image's. RGB
    and greyscale images get alpha 255 (greyscale becomes RGB; 16-bit greyscale is scaled to 8 bits);
    palette images keep their transparency. Resizing is bilinear with antialiasing on premultiplied
    alpha, so transparent pixels' colours do not bleed into the object's edge.
    """
    try:
        with Image.open(path, formats=FORMATS) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # checked on the header, before decoding
                raise DataError(
                    path,
                    f"image of {im.width}x{im.height} pixels is larger than the "
                    f"{MAX_IMAGE_PIXELS} pixels allowed (corrupt header or not a view)",
                )
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            # phone photos are stored landscape with an EXIF Orientation tag (6: turn 90 degrees
            # clockwise to display); turn them upright, as every viewer does, and drop the tag
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I"):  # 16-bit greyscale PNG ("I;16", "I"): convert() would clip at 255
                im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8), "L")
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected an image file") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (not PNG or JPEG, or corrupt)") from None
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated data, bad CRC, broken stream
        raise DataError(path, f"corrupt or truncated image ({e})") from None
    if size is not None and rgba.size != (size, size):
        rgba = rgba.convert("RGBa").resize((size, size), Image.BILINEAR, reducing_gap=None).convert("RGBA")
    return np.asarray(rgba, dtype=np.uint8).copy()


def composite(rgba: np.ndarray, background: float | np.ndarray = EVAL_BACKGROUND) -> np.ndarray:
    """Composite ``rgba: (..., H, W, 4) uint8`` over a grey ``background`` (0..255).

    Returns ``(..., H, W, 3) float32`` in 0..255.
    """
    rgba = np.asarray(rgba, dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha + np.float32(background) * (1.0 - alpha)

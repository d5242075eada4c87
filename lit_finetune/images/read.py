"""Reading image files as 8-bit RGB, whatever their mode and EXIF orientation."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: grayscale, 16-bit grayscale (scaled, not clipped), palette,
    RGBA/LA (alpha dropped), CMYK, YCbCr."""
    if img.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(img, dtype=np.float32)
        scale = 257.0 if img.mode != "I" or pixels.max() > 255 else 1.0
        img = Image.fromarray((pixels / scale).round().clip(0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the documented route for palettes with transparency
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(path: str, max_side: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB with its EXIF orientation applied (see :func:`to_rgb` for the modes handled).

    Args:
        path: the image file.
        max_side: decode JPEGs at a reduced scale (at least this many pixels a side): a fast full read of
            the file that still finds truncated or corrupt data. Used by the bad-image scan.
    """
    with Image.open(path) as img:
        if max_side is not None and img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a malformed EXIF block: keep the pixels as stored
            pass
        return to_rgb(img)

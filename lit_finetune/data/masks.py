"""Segmentation masks on disk: reading them as class indices, palettes, and the checks done before training.

A mask is a single-channel PNG whose pixel values are class indices: an index PNG (mode ``L``, or ``I``/``I;16``
for more than 256 classes), a palette PNG (mode ``P``, as in Pascal VOC: the stored palette indices are the
classes, the colours only show them), or a 1-bit PNG. RGB masks are refused: a colour-coded RGB mask needs a
colour-to-class table that the file does not carry. What the stored values mean (class indices, or background
and foreground of binary masks) is the task's rule: :mod:`lit_finetune.tasks.segmentation_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lit_finetune.data.check import format_problems  # noqa: F401 (importable from here too)
from lit_finetune.images.palette import default_palette, palette_image, read_palette  # noqa: F401 (importable from here too)

INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")
"""PIL modes read as class indices."""
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that rotate by 90 degrees: the image is read with width and height swapped."""


class MaskFormatError(ValueError):
    """A mask file that cannot be read as class indices (an RGB image, an unreadable file)."""


def read_mask(path: str | Path) -> np.ndarray:
    """The stored values of a mask file as an ``(H, W)`` int64 array (palette PNGs: their palette indices).

    Raises:
        MaskFormatError: the file is not a single-channel or palette image, or cannot be read.

    Example::

        read_mask("data/voc/masks/2007_000032.png")  # array([[0, 0, ...], ...]), values 0-20 and 255
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in INDEX_MODES:
                raise MaskFormatError(
                    f"mask '{path}' is a {mode} image, not class indices. Save masks as single-channel PNGs whose pixel "
                    "values are class indices (mode L), or as palette PNGs (mode P, as Pascal VOC); an RGB mask needs "
                    "its colours mapped to class indices first."
                )
            return np.asarray(img, dtype=np.int64)
    except MaskFormatError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise MaskFormatError(f"mask '{path}' cannot be read: {type(err).__name__}: {err}") from err


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image as it is read for training (EXIF rotation applied), from its header."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
            width, height = height, width
    return height, width


@dataclass(frozen=True)
class MaskInfo:
    """What the scan learned about one image/mask pair.

    Attributes:
        mask: the mask file.
        values: the distinct stored values of the mask.
        counts: the number of pixels of each of those values.
        error: why the pair cannot be used (unreadable or RGB mask, unreadable image, other size); None when fine.
    """

    mask: str
    values: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()
    error: str | None = None


def inspect_pair(image: str, mask: str) -> MaskInfo:
    """Read the mask and the image's size: the mask's values, or why the pair is unusable."""
    try:
        values = read_mask(mask)
    except MaskFormatError as err:
        return MaskInfo(mask, error=str(err))
    try:
        size = image_size(image)
    except Exception as err:
        return MaskInfo(mask, error=f"image '{image}' cannot be read: {type(err).__name__}: {err}")
    if tuple(values.shape) != size:
        return MaskInfo(mask, error=f"mask is {values.shape[0]}x{values.shape[1]} (HxW) but its image '{image}' is {size[0]}x{size[1]}")
    distinct, counts = np.unique(values, return_counts=True)
    return MaskInfo(mask, tuple(distinct.tolist()), tuple(counts.tolist()))

"""Colours of class masks: palettes read from PNGs, Pascal VOC's colour map, and masks as palette images.

Shared by the segmentation data (the palette of the training masks) and the callbacks that draw and write masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def read_palette(path: str | Path, num_colors: int) -> list[tuple[int, int, int]] | None:
    """The first ``num_colors`` RGB colours of a palette PNG, or None when the file has no palette."""
    with Image.open(path) as img:
        palette = img.getpalette()
        if img.mode != "P" or palette is None:
            return None
        flat = palette[: 3 * num_colors]
    colors = [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]
    return colors + default_palette(num_colors)[len(colors) :]


def default_palette(num_colors: int) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map: black for class 0, then well separated colours (the bits of the index spread
    over the high bits of R, G and B). Written here because torchvision does not ship it."""
    colors = []
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors


def palette_image(mask: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> Image.Image:
    """A mode ``P`` PNG-ready image of an ``(H, W)`` class-index mask coloured by ``palette``.

    Indices without a colour are black, except 255 (the usual ``ignore_index``), which is white.

    Raises:
        ValueError: a value is outside 0-255 (a palette image has 256 entries).
    """
    values = np.asarray(mask)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(f"A palette PNG holds class indices 0-255; this mask holds {int(values.min())}..{int(values.max())}.")
    flat = [0, 0, 0] * 256
    for i, color in enumerate(palette[:255]):
        flat[3 * i : 3 * i + 3] = [int(v) for v in color]
    flat[3 * 255 :] = [255, 255, 255]
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(flat)
    return image

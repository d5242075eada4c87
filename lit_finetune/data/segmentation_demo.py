"""Real images for the offline segmentation quickstart: scikit-learn's digit scans placed on canvases.

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (43 writers). Each demo image is a square
canvas (64x64 by default) with two to four of them at random positions and scales (16 to 30 pixels a side; a
digit that finds no room is drawn smaller), their boxes not overlapping, over a faint random background; grey strokes saved as an RGB PNG. Its mask
gives every stroke pixel (a pixel of the upscaled scan at least a quarter as bright as the scan's brightest)
its digit's class plus one, and 0 to the background: 11 classes, named in ``classes.txt`` as
``background, 0, 1, ..., 9``. Training and validation canvases use disjoint halves of the scans (4:1).
Written as ``root/{train,val}/{images,masks}/<n>.png`` (masks as palette PNGs, so that viewers show them in
Pascal VOC's colours), the layout of :class:`SegmentationDataModule`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lit_finetune.data.demo import has_splits, load_scan_pools, move_into_place, scan_image, staging_folder
from lit_finetune.data.masks import default_palette

SEGMENTATION_CLASSES = ["background"] + [str(d) for d in range(10)]
"""Class names of the demo: class ``d + 1`` is the digit ``d``."""
STROKE_LEVEL = 0.25
"""A pixel of an upscaled scan is a stroke when it is at least this share of the scan's brightest pixel."""


def scaled_scan(scan: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 scan (values 0-16) upscaled to ``side`` x ``side`` floats in [0, 1] (bilinear)."""
    return np.asarray(scan_image(scan, side), dtype=np.float32) / 255.0


def place_boxes(
    rng: np.random.Generator, canvas: int, sides: list[int], min_side: int = 16, tries: int = 200
) -> list[tuple[int, int, int]]:
    """``(row, col, side)`` boxes inside the canvas that do not overlap.

    A box that finds no room in ``tries`` random positions is shrunk by 2 pixels and tried again, down to
    ``min_side``; only then is it dropped. Two boxes always fit when the first is at most ``canvas - 2 * min_side``
    pixels a side (30 on 64x64 canvases with 16-pixel digits), so every canvas holds at least two digits.
    """
    boxes: list[tuple[int, int, int]] = []
    for side in sides:
        placed = False
        while not placed and side >= min_side:
            for _ in range(tries):
                row, col = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
                if all(row + side <= r or r + s <= row or col + side <= c or c + s <= col for r, c, s in boxes):
                    boxes.append((row, col, side))
                    placed = True
                    break
            side -= 2
    return boxes


def compose_canvas(
    images: np.ndarray, targets: np.ndarray, rng: np.random.Generator, size: int = 64, sides: tuple[int, int] = (16, 30)
) -> tuple[np.ndarray, np.ndarray]:
    """One demo sample: an ``(size, size, 3)`` uint8 image and its ``(size, size)`` uint8 mask of classes 0-10.

    Args:
        images: the 8x8 scans to draw from.
        targets: their digits.
        rng: the random generator (positions, scales, digits, background).
        size: side of the canvas.
        sides: smallest and largest side of a placed digit.
    """
    count = int(rng.integers(2, 5))
    boxes = place_boxes(rng, size, sorted((int(s) for s in rng.integers(sides[0], sides[1] + 1, size=count)), reverse=True), sides[0])
    grey = rng.uniform(0.0, 0.15) + rng.normal(0.0, 0.03, size=(size, size))
    mask = np.zeros((size, size), dtype=np.uint8)
    for row, col, side in boxes:
        pick = int(rng.integers(len(targets)))
        tile = scaled_scan(images[pick], side)
        window = (slice(row, row + side), slice(col, col + side))
        grey[window] = np.maximum(grey[window], tile)
        mask[window][tile >= STROKE_LEVEL * tile.max()] = targets[pick] + 1
    pixels = (np.clip(grey, 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(pixels[..., None], 3, axis=2), mask


def write_digit_segmentation(root: str | Path, n_train: int = 1600, n_val: int = 400, size: int = 64, seed: int = 0) -> Path:
    """Write the demo under ``root`` unless ``root/train`` and ``root/val`` are there; return ``root``.

    Deterministic for a given ``seed``. Written into a temporary folder and renamed into place, so an
    interrupted write, or two processes writing at once, never leave a half-filled folder.

    Raises:
        FileExistsError: ``root`` exists and holds other files.

    Example::

        write_digit_segmentation("data/digits_seg")  # data/digits_seg/train/images/00000.png, .../masks/00000.png
    """
    root = Path(root)
    if has_splits(root):
        return root
    digits, rng, pools = load_scan_pools(seed)
    tmp = staging_folder(root, ".digits-seg-")
    palette = [channel for color in default_palette(256) for channel in color]
    (tmp / "classes.txt").write_text("\n".join(SEGMENTATION_CLASSES) + "\n")
    for split, count in (("train", n_train), ("val", n_val)):
        pool = pools[split]
        for folder in ("images", "masks"):
            (tmp / split / folder).mkdir(parents=True)
        for i in range(count):
            image, mask = compose_canvas(digits.images[pool], digits.target[pool], rng, size)
            Image.fromarray(image, mode="RGB").save(tmp / split / "images" / f"{i:05d}.png")
            mask_png = Image.fromarray(mask, mode="P")
            mask_png.putpalette(palette)
            mask_png.save(tmp / split / "masks" / f"{i:05d}.png")
    move_into_place(tmp, root, has_splits, "digits_seg")
    return root

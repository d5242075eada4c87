"""Helpers of the segmentation data tests: tiny image/mask folders written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lit_finetune.data.masks import default_palette


def save_mask(values: np.ndarray, path: Path, mode: str = "L") -> Path:
    """Save ``values`` as an index PNG (``L``), a VOC-style palette PNG (``P``) or a 16-bit PNG (``I;16``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        image = Image.fromarray(values.astype(np.uint16))
    else:
        image = Image.fromarray(values.astype(np.uint8), mode="L" if mode == "L" else "P")
        if mode == "P":
            image.putpalette([c for color in default_palette(256) for c in color])
    image.save(path)
    return path


def block_mask(height: int, width: int, num_classes: int, seed: int) -> np.ndarray:
    """A mask of four quadrants of random classes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=np.int64)
    classes = rng.integers(0, num_classes, size=4)
    mask[: height // 2, : width // 2], mask[: height // 2, width // 2 :] = classes[0], classes[1]
    mask[height // 2 :, : width // 2], mask[height // 2 :, width // 2 :] = classes[2], classes[3]
    return mask


def write_pairs(
    folder: Path, count: int, size: tuple[int, int] = (24, 32), num_classes: int = 3, mode: str = "L", seed: int = 0, prefix: str = "img"
) -> list[tuple[Path, Path]]:
    """``count`` images under ``folder/images`` (colour = class of each quadrant) and their masks under ``folder/masks``."""
    pairs = []
    for i in range(count):
        mask = block_mask(*size, num_classes, seed + i)
        pixels = np.stack([(mask * 60) % 256, (mask * 110) % 256, np.full(size, 40)], axis=-1).astype(np.uint8)
        image = folder / "images" / f"{prefix}{i:03d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="RGB").save(image)
        pairs.append((image, save_mask(mask, folder / "masks" / f"{prefix}{i:03d}.png", mode)))
    return pairs


def write_split_root(root: Path, num_classes: int = 3, mode: str = "L", train: int = 4, val: int = 2) -> Path:
    """``root/train/{images,masks}`` and ``root/val/{images,masks}``."""
    write_pairs(root / "train", train, num_classes=num_classes, mode=mode, seed=0)
    write_pairs(root / "val", val, num_classes=num_classes, mode=mode, seed=100)
    return root


def coordinate_pair(folder: Path, height: int = 48, width: int = 64) -> Path:
    """One image whose red channel is 4 * x and green channel 4 * y, and a 16-bit mask holding ``y * width + x``."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([4 * xs, 4 * ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(folder / "images" / "grid.png")
    save_mask(ys * width + xs, folder / "masks" / "grid.png", "I;16")
    return folder

"""Real images for the offline quickstart: scikit-learn's handwritten digits written as PNG files.

scikit-learn ships the UCI ML hand-written digits data set (1,797 grayscale 8x8 images of the
digits 0-9, from 43 writers) inside the package, so no download is needed. The images are
upscaled to 32x32 and written to ``root/train/<digit>/`` and ``root/val/<digit>/`` (a fixed,
stratified 80/20 split), the same layout users give their own data in.

``write_digit_pairs`` composes two or three different digits into one image, for multilabel data:
PNGs under ``root/images/`` and ``root/labels.csv`` (columns ``image``, ``labels`` such as ``"3 7"``,
``split``), the layout of the CSV route.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DIGIT_CLASSES = [str(d) for d in range(10)]


def scan_image(scan: np.ndarray, side: int) -> Image.Image:
    """One 8x8 digit scan (values 0-16) as a ``side`` x ``side`` grayscale image (bilinear)."""
    pixels = (scan * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((side, side), Image.Resampling.BILINEAR)


def has_splits(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` and ``val/`` folders (a written demo of that layout)."""
    return (root / "train").is_dir() and (root / "val").is_dir()


def has_labels_csv(root: Path) -> bool:
    """Whether ``root`` holds ``labels.csv`` (a written ``digit_pairs`` demo)."""
    return (root / "labels.csv").is_file()


def load_scan_pools(seed: int) -> tuple[Any, np.random.Generator, dict[str, np.ndarray]]:
    """scikit-learn's digits, a generator seeded with ``seed``, and disjoint indices of the scans drawn with it
    for training (four fifths) and validation (one fifth)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    return digits, rng, {"train": order[len(order) // 5 :], "val": order[: len(order) // 5]}


def staging_folder(root: Path, prefix: str) -> Path:
    """A new temporary folder next to ``root`` to write a demo into, then :func:`move_into_place`."""
    root.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root.parent))


def move_into_place(tmp: Path, root: Path, is_written: Callable[[Path], bool] | None = None, demo: str = "") -> None:
    """Rename the written ``tmp`` folder to ``root`` (atomic: an interrupted write or two processes writing at once
    never leave a half-filled folder); when ``root`` appeared meanwhile, drop ``tmp``.

    Raises:
        FileExistsError: ``root`` exists and, by ``is_written`` (when given), does not hold the ``demo``: it holds other files.
    """
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first, or root holds other files
        shutil.rmtree(tmp, ignore_errors=True)
        if is_written is not None and not is_written(root):
            raise FileExistsError(
                f"'{root}' exists and holds other files: give `data.root` an empty or new folder for the {demo} demo."
            ) from None


def write_digits(root: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits as PNGs under ``root`` unless they are already there; return ``root``.

    Written into a temporary folder first and renamed into place, so that an interrupted write or two
    processes writing at once never leave a half-filled folder.
    """
    root = Path(root)
    if has_splits(root):
        return root
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    tmp = staging_folder(root, ".digits-")
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = tmp / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                scan_image(digits.images[i], size).save(folder / f"{i:04d}.png")
    move_into_place(tmp, root)
    return root


def digit_tile(scan: np.ndarray, cell: int) -> np.ndarray:
    """One 8x8 digit scan (values 0-16) as a ``cell`` x ``cell`` uint8 tile."""
    return np.asarray(scan_image(scan, cell))


def compose_digits(images: np.ndarray, targets: np.ndarray, rng: np.random.Generator, grid: int, cell: int) -> tuple[np.ndarray, list[int]]:
    """A ``grid * cell`` square canvas with two or three different digits in random cells; and those digits."""
    digits = sorted(rng.choice(10, size=int(rng.integers(2, 4)), replace=False).tolist())
    cells = rng.choice(grid * grid, size=len(digits), replace=False)
    canvas = np.zeros((grid * cell, grid * cell), dtype=np.uint8)
    for digit, where in zip(digits, cells, strict=False):
        scan = images[rng.choice(np.flatnonzero(targets == digit))]
        row, col = divmod(int(where), grid)
        canvas[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = digit_tile(scan, cell)
    return canvas, digits


def write_digit_pairs(root: str | Path, n_train: int = 1500, n_val: int = 300, grid: int = 3, cell: int = 16, seed: int = 0) -> Path:
    """Write multilabel digit images and ``labels.csv`` under ``root`` unless ``labels.csv`` is there; return ``root``.

    Each image is a ``grid`` x ``grid`` grid of ``cell``-pixel cells (48x48 by default) holding two or three
    different digits, real scans; its labels are the digits that appear. Training and validation images
    are drawn from disjoint halves of the scans (a fixed split, in the ``split`` column). Written into a
    temporary folder and renamed into place, like :func:`write_digits`, so an interrupted write is redone.

    Example::

        write_digit_pairs("data/digit_pairs")  # data/digit_pairs/images/00000.png, data/digit_pairs/labels.csv
    """
    root = Path(root)
    if has_labels_csv(root):
        return root
    digits, rng, pools = load_scan_pools(seed)
    tmp = staging_folder(root, ".digit-pairs-")
    (tmp / "images").mkdir()
    rows: list[tuple[str, str, str]] = []
    for split, count in (("train", n_train), ("val", n_val)):
        pool = pools[split]
        for _ in range(count):
            canvas, labels = compose_digits(digits.images[pool], digits.target[pool], rng, grid, cell)
            name = f"images/{len(rows):05d}.png"
            Image.fromarray(canvas, mode="L").save(tmp / name)
            rows.append((name, " ".join(map(str, labels)), split))
    with (tmp / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "labels", "split"), *rows])
    move_into_place(tmp, root, has_labels_csv, "digit_pairs")
    return root

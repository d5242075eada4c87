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

import os
import shutil
import csv
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_CLASSES = [str(d) for d in range(10)]


def write_digits(root: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits as PNGs under ``root`` unless they are already there; return ``root``.

    Written into a temporary folder first and renamed into place, so that an interrupted write or two
    processes writing at once never leave a half-filled folder.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = tmp / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def digit_tile(scan: np.ndarray, cell: int) -> np.ndarray:
    """One 8x8 digit scan (values 0-16) as a ``cell`` x ``cell`` uint8 tile."""
    pixels = (scan * (255.0 / 16.0)).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels, mode="L").resize((cell, cell), Image.BILINEAR))


def compose_digits(images: np.ndarray, targets: np.ndarray, rng: np.random.Generator, grid: int, cell: int) -> tuple[np.ndarray, list[int]]:
    """A ``grid * cell`` square canvas with two or three different digits in random cells; and those digits."""
    digits = sorted(rng.choice(10, size=int(rng.integers(2, 4)), replace=False).tolist())
    cells = rng.choice(grid * grid, size=len(digits), replace=False)
    canvas = np.zeros((grid * cell, grid * cell), dtype=np.uint8)
    for digit, where in zip(digits, cells):
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
    if (root / "labels.csv").is_file():
        return root
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    pools = {"train": order[len(order) // 5 :], "val": order[: len(order) // 5]}
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digit-pairs-", dir=root.parent))
    (tmp / "images").mkdir()
    rows = []
    for split, count in (("train", n_train), ("val", n_val)):
        pool = pools[split]
        for _ in range(count):
            canvas, labels = compose_digits(digits.images[pool], digits.target[pool], rng, grid, cell)
            name = f"images/{len(rows):05d}.png"
            Image.fromarray(canvas, mode="L").save(tmp / name)
            rows.append((name, " ".join(map(str, labels)), split))
    with (tmp / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "labels", "split"), *rows])
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "labels.csv").is_file():
            raise FileExistsError(f"'{root}' exists and holds other files: give `data.root` an empty or new folder for the digit_pairs demo.") from None
    return root

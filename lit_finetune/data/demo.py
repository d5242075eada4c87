"""Real images for the offline quickstart: scikit-learn's handwritten digits written as PNG files.

scikit-learn ships the UCI ML hand-written digits data set (1,797 grayscale 8x8 images of the
digits 0-9, from 43 writers) inside the package, so no download is needed. The images are
upscaled to 32x32 and written to ``root/train/<digit>/`` and ``root/val/<digit>/`` (a fixed,
stratified 80/20 split), the same layout users give their own data in.
"""

from __future__ import annotations

import os
import shutil
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

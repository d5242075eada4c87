"""Shared fixtures: tiny image folders made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Write ``per_class`` PNGs per class under ``root/<class>/``; each class has its own colour so a model can learn it."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            noise = rng.integers(0, 55, size=(size, size, 3))
            pixels = np.clip(base + noise + (c // 3) * 40, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, more threads spin against each other and run many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``root/train/<class>`` and ``root/val/<class>`` with two classes, 32 px PNGs."""
    root = tmp_path / "data"
    write_image_folder(root / "train", per_class=8, seed=0)
    write_image_folder(root / "val", per_class=4, seed=1)
    return root


@pytest.fixture
def make_image_folder():
    """The writer itself, for tests that need another layout."""
    return write_image_folder

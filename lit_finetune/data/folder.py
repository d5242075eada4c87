"""Image-folder scanning and a dataset that returns dicts.

Layout: ``root/<class name>/<image file>``. Class indices follow the sorted class-folder names,
as in ``torchvision.datasets.ImageFolder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lit_finetune import keys
from lit_finetune.data.decode import read_image
from lit_finetune.images.read import load_rgb, to_rgb  # noqa: F401 (importable from here too)
from lit_finetune.tasks.targets import Target

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(root: Path) -> list[str]:
    """Sorted names of the class folders under ``root`` (hidden folders ignored)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_image_folder(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Return ``(class_names, samples)`` for ``root/<class>/<images>``.

    Args:
        root: the folder whose sub-folders are classes.
        classes: the class names to use (those of the training split when scanning val/test);
            every class folder in ``root`` must be one of them.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no class folders, a class folder unknown to ``classes``, an empty class folder,
            or no images at all.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder '{root}' does not exist. Check `data.root` (expected root/<class>/<images>).")
    found = find_classes(root)
    if not found:
        raise ValueError(f"'{root}' has no class folders. Put the images in one sub-folder per class: {root}/<class name>/<image>.")
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(
                f"'{root}' has class folders that the training data lacks: {extra}. Training classes are {list(classes)}. "
                "Add training images for them or remove those folders."
            )
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    empty = []
    for name in found:
        images = list_images(root / name)
        if not images:
            empty.append(name)
        samples.extend((str(p), index[name]) for p in images)
    if empty:
        raise ValueError(
            f"Class folder(s) {empty} under '{root}' hold no images (extensions {', '.join(IMAGE_EXTENSIONS)}). "
            "Add images or remove the empty folders."
        )
    return list(classes), samples


class BadImageError(RuntimeError):
    """Raised when an image file cannot be read or decoded."""


class ImageDataset(Dataset):
    """A list of ``(path, target)`` samples read as dicts ``{image, target, index, path}``.

    Args:
        samples: file paths and targets: class indices (returned as ints), or tuples of floats
            (multilabel multi-hot, binary ``(0.0,)``/``(1.0,)``: returned as float tensors).
        transform: applied to the image, a PIL image or (JPEGs) a uint8 ``tv_tensors.Image`` (for example a transforms v2
            pipeline, which takes both).
        loader: reads a path into an image (default :func:`~lit_finetune.data.decode.read_image`: JPEGs with
            ``torchvision.io.decode_jpeg``, other formats with PIL).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, Target]],
        transform: Callable | None = None,
        loader: Callable[[str], Any] = read_image,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as err:
            # Raised inside a dataloader worker: say which file and what to do in the first line.
            raise BadImageError(
                f"Cannot read image '{path}': {type(err).__name__}: {err}. List every unreadable file with "
                "`lit-finetune check-data <root>`, and skip them with `data.bad_images: skip`."
            ) from err
        if self.transform is not None:
            image = self.transform(image)
        if not isinstance(target, int):
            target = torch.tensor(target, dtype=torch.float32)  # type: ignore[assignment]  # soft or multi-hot targets as tensors
        return {keys.IMAGE: image, keys.TARGET: target, keys.INDEX: index, keys.PATH: path}

    @property
    def targets(self) -> list[Target]:
        return [t for _, t in self.samples]

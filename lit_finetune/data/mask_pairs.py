"""Image/mask pairs on disk: matching masks to images by name, and the seeded validation split.

Masks are named like their images (any image extension, PNG masks), optionally with a suffix
(``a.jpg`` -> ``a_mask.png``); sub-folders are allowed. Every image without a mask and every mask
without an image is an error, all of them counted and the first 20 listed.
"""

from __future__ import annotations

from pathlib import Path

from lit_finetune.data.folder import list_images
from lit_finetune.data.masks import format_problems
from lit_finetune.data.splits import seeded_split

Pair = tuple[str, str | None]
"""An image file and its mask file (None: no mask, for predict)."""


def _key(path: Path, folder: Path, suffix: str = "") -> str:
    """The name that pairs an image with its mask: the path under ``folder`` without extension (and ``suffix``)."""
    name = path.relative_to(folder).with_suffix("").as_posix()
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def _by_key(files: list[Path], folder: Path, suffix: str = "") -> dict[str, Path]:
    """Files by their pairing name; two files of one name are an error."""
    found: dict[str, list[Path]] = {}
    for path in files:
        found.setdefault(_key(path, folder, suffix), []).append(path)
    clashes = [f"{' and '.join(str(p) for p in paths)}" for paths in found.values() if len(paths) > 1]
    if clashes:
        raise ValueError(format_problems(f"names under '{folder}' are used by more than one file (rename one of each)", clashes))
    return {key: paths[0] for key, paths in found.items()}


def list_pairs(images_dir: Path, masks_dir: Path, mask_suffix: str = "") -> list[tuple[str, str]]:
    """``(image, mask)`` paths whose names match, sorted; every unmatched file is an error.

    Args:
        images_dir: folder of images (searched recursively).
        masks_dir: folder of masks, laid out like ``images_dir``.
        mask_suffix: what mask names add to their image's name (``"_mask"``: ``a.jpg`` -> ``a_mask.png``).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: no images, or images without masks / masks without images (all of them counted, 20 listed).
    """
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Folder '{folder}' does not exist. A segmentation data folder holds images/ and masks/ (or train/, val/ "
                "with images/ and masks/ each); check `data.root`."
            )
    images = _by_key(list_images(images_dir), images_dir)
    if not images:
        raise ValueError(f"No images under '{images_dir}' (extensions .png, .jpg, ...). Put the images there.")
    masks = _by_key(list_images(masks_dir), masks_dir, mask_suffix)
    problems = []
    no_mask = sorted(str(images[k]) for k in images.keys() - masks.keys())
    if no_mask:
        problems.append(
            format_problems(
                f"images have no mask in '{masks_dir}' (a mask is named like its image{' + ' + repr(mask_suffix) if mask_suffix else ''})",
                no_mask,
            )
        )
    no_image = sorted(str(masks[k]) for k in masks.keys() - images.keys())
    if no_image:
        problems.append(format_problems(f"masks have no image in '{images_dir}'", no_image))
    if problems:
        raise ValueError("\n".join(problems) + "\nAdd the missing files or remove the unmatched ones.")
    return [(str(images[k]), str(masks[k])) for k in sorted(images)]


def split_pairs(pairs: list[tuple[str, str]], val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split: ``val_fraction`` of the pairs (at least one) for validation.

    Raises:
        ValueError: too few pairs to hold one out.
    """
    val, train = seeded_split(pairs, val_fraction, seed)
    if not train:
        raise ValueError(f"{len(pairs)} image/mask pairs are too few to hold out a validation set: add images, or a val/ folder.")
    return train, val

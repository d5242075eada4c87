"""``SegmentationDataModule``: folders of images and masks with matching names, ready for training.

Layouts (masks named like their images, any image extension, PNG masks; sub-folders allowed)::

    root/images/<name>.jpg   root/masks/<name>.png            split by val_fraction with split_seed
    root/train/images/...    root/train/masks/...              or fixed splits
    root/val/images/...      root/val/masks/...
    root/test/images/...     root/test/masks/...               (optional)
    root/classes.txt                                           (optional) one class name a line

A sample is a dict: ``image`` (float ``(3, H, W)``, normalized), ``target`` (int64 ``(H, W)`` class indices,
``ignore_index`` for unlabelled pixels; binary: 0/1), ``index``, ``path`` and ``original_size`` (the image file's
``(height, width)``). Images and masks go through the same random crop and flip (transforms v2 with
``tv_tensors.Mask``: nearest interpolation for masks, padding filled with ``ignore_index``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.data.base import FolderDataModule, check_val_fraction
from lit_finetune.data.check import scan_once
from lit_finetune.data.folder import BadImageError, list_images, load_rgb
from lit_finetune.data.masks import (
    allowed_values,
    binary_positive_value,
    default_palette,
    format_problems,
    mask_problems,
    read_mask,
    read_palette,
    scan_masks,
    to_target,
)
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.data.splits import seeded_split
from lit_finetune.models.preprocessing import configured_preprocessing

log = logging.getLogger(__name__)

Pair = tuple[str, str | None]
"""An image file and its mask file (None: no mask, for predict)."""
Color = tuple[int, int, int]


def _key(path: Path, folder: Path, suffix: str = "") -> str:
    """The name that pairs an image with its mask: the path under ``folder`` without extension (and ``suffix``)."""
    name = path.relative_to(folder).with_suffix("").as_posix()
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def _by_key(files: list[Path], folder: Path, suffix: str = "") -> dict[str, Path]:
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
        problems.append(format_problems(f"images have no mask in '{masks_dir}' (a mask is named like its image{' + ' + repr(mask_suffix) if mask_suffix else ''})", no_mask))
    no_image = sorted(str(masks[k]) for k in masks.keys() - images.keys())
    if no_image:
        problems.append(format_problems(f"masks have no image in '{images_dir}'", no_image))
    if problems:
        raise ValueError("\n".join(problems) + "\nAdd the missing files or remove the unmatched ones.")
    return [(str(images[k]), str(masks[k])) for k in sorted(images)]


def read_class_names(root: Path, class_names: Sequence[str] | None, num_classes: int | None, task: str) -> list[str]:
    """Class names: from the config, else ``root/classes.txt``, else ``"0"`` .. ``"C-1"``; binary: two names.

    Raises:
        ValueError: neither names nor ``num_classes`` are given, or they disagree.
    """
    if task == "binary" and num_classes not in (None, 2):
        raise ValueError(f"task 'binary' has 2 classes (background, foreground), not num_classes={num_classes}. Use task 'multiclass'.")
    source = "data.class_names"
    names = list(class_names) if class_names else None
    if names is None and (root / "classes.txt").is_file():
        names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
        source = str(root / "classes.txt")
    if names is None and task == "binary":
        names = ["background", "foreground"][: num_classes or 2]
    if names is None:
        if num_classes is None:
            raise ValueError(
                f"The number of classes is unknown: write the class names, one a line and background first, into "
                f"'{root / 'classes.txt'}', or set `data.class_names` or `data.num_classes`."
            )
        names = [str(i) for i in range(num_classes)]
    if num_classes is not None and num_classes != len(names):
        raise ValueError(f"`data.num_classes` is {num_classes} but {source} names {len(names)} classes: make them agree.")
    if task == "binary" and len(names) != 2:
        raise ValueError(f"task 'binary' needs 2 classes (background, foreground); {source} names {len(names)}. Use task 'multiclass'.")
    if len(names) < 2:
        raise ValueError(f"Segmentation needs at least 2 classes (background and one more); {source} names {names}.")
    return names


def _to_model_input(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """Images to normalized float32; masks untouched."""
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def segmentation_train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: Literal["resized", "crop"] = "resized",
    crop_scale: tuple[float, float] = (0.25, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    vflip: bool = False,
    ignore_index: int = 255,
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
) -> v2.Compose:
    """The same random crop and flips on an image and its mask, then the image normalized.

    Args:
        size: side of the square crop.
        mean: normalization mean.
        std: normalization std.
        crop: ``"resized"``: ``RandomResizedCrop`` (a random area ``crop_scale`` and aspect ``crop_ratio``,
            resized to ``size``); ``"crop"``: a ``size`` crop at the image's own scale, padding smaller images
            (image with 0, mask with ``ignore_index``).
        crop_scale: area range of the resized crop.
        crop_ratio: aspect range of the resized crop.
        hflip: random horizontal flips.
        vflip: random vertical flips.
        ignore_index: the mask value of padding.
        interpolation: the images' interpolation; masks always use nearest.

    Example::

        t = segmentation_train_transform(64, (0.5,) * 3, (0.25,) * 3)
        image, mask = t(tv_tensors.Image(uint8_chw), tv_tensors.Mask(long_hw))
    """
    if crop == "resized":
        steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio, interpolation=interpolation, antialias=True)]
    elif crop == "crop":
        steps = [v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})]
    else:
        raise ValueError(f"`train_crop` must be 'resized' or 'crop', got {crop!r}.")
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose(steps + _to_model_input(mean, std))


def segmentation_eval_transform(
    size: int | None, mean: Sequence[float], std: Sequence[float], interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR
) -> v2.Compose:
    """Resize image and mask to ``size`` x ``size`` (masks: nearest; None: keep the full resolution), normalize."""
    steps: list[v2.Transform] = [] if size is None else [v2.Resize((size, size), interpolation=interpolation, antialias=True)]
    return v2.Compose(steps + _to_model_input(mean, std))


class SegmentationDataset(Dataset):
    """``(image, mask)`` file pairs read as dicts ``{image, target, index, path, original_size}``.

    Args:
        pairs: image files and their mask files; a None mask gives a sample without ``target`` (predict).
        transform: called as ``transform(image, mask)`` on a ``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask``
            (int64 ``(H, W)``), or ``transform(image)`` without a mask; returns the same.
        binary: map the stored ``positive_value`` to 1 (binary masks).
        positive_value: the stored value of the positive class in binary masks (1, or 255 for 0/255 masks).
        ignore_index: the value of unlabelled pixels, kept as is.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        transform: Callable | None = None,
        binary: bool = False,
        positive_value: int = 1,
        ignore_index: int = 255,
    ) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.binary = binary
        self.positive_value = positive_value
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, path: str) -> tv_tensors.Image:
        try:
            return tv_tensors.Image(F.pil_to_tensor(load_rgb(path)))
        except Exception as err:
            # Raised inside a dataloader worker: say which file and what to do in the first line.
            raise BadImageError(f"Cannot read image '{path}': {type(err).__name__}: {err}. List unreadable files with `lit-finetune check-data <root>`.") from err

    def _mask(self, path: str, image_size: tuple[int, int]) -> tv_tensors.Mask:
        values = read_mask(path)
        if tuple(values.shape) != image_size:
            raise ValueError(f"Mask '{path}' is {values.shape[0]}x{values.shape[1]} but its image is {image_size[0]}x{image_size[1]} (HxW): they must match.")
        return tv_tensors.Mask(torch.from_numpy(to_target(values, self.binary, self.positive_value, self.ignore_index)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, mask_path = self.pairs[index]
        image = self._image(path)
        size = tuple(image.shape[-2:])
        sample: dict[str, Any] = {keys.INDEX: index, keys.PATH: path, keys.ORIGINAL_SIZE: torch.tensor(size, dtype=torch.long)}
        if mask_path is None:
            image = self.transform(image) if self.transform is not None else image
        else:
            mask = self._mask(mask_path, size)
            image, mask = self.transform(image, mask) if self.transform is not None else (image, mask)
            sample[keys.TARGET] = mask.as_subclass(torch.Tensor).long()
        sample[keys.IMAGE] = image.as_subclass(torch.Tensor)
        return sample


def collate_same_size(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` after checking that the images have one size (full-resolution evaluation)."""
    sizes = {tuple(sample[keys.IMAGE].shape[-2:]) for sample in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"Full-resolution evaluation (`data.eval_size: null`) met images of {len(sizes)} sizes in one batch "
            f"({sorted(sizes)[:4]}): set `data.eval_batch_size: 1`, or evaluate at a fixed size (`data.eval_size: 512`)."
        )
    return default_collate(batch)


def split_pairs(pairs: list[tuple[str, str]], val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split: ``val_fraction`` of the pairs (at least one) for validation."""
    val, train = seeded_split(pairs, val_fraction, seed)
    if not train:
        raise ValueError(f"{len(pairs)} image/mask pairs are too few to hold out a validation set: add images, or a val/ folder.")
    return train, val


class SegmentationDataModule(FolderDataModule):
    """Images and masks on disk as train/val/test/predict dataloaders of dict samples.

    The folders are listed when the module is created (a missing folder, no images, an image without a
    mask or a mask without an image are errors then); at ``setup`` every mask is read once (on global rank
    0 under DDP) and a mask of another size than its image, an unreadable or RGB mask, and mask values
    outside ``[0, num_classes)`` that are not ``ignore_index`` stop the run before training, every
    offender counted and the first 20 listed.

    Args:
        root: the data folder (see the module docstring for the layouts).
        batch_size: samples per training batch (per process under DDP).
        eval_batch_size: samples per validation/test/predict batch; None: ``batch_size``. Full-resolution
            evaluation (``eval_size: null``) batches only images of one size: use 1 for images of mixed sizes.
        num_workers: dataloader worker processes.
        pin_memory: page-locked host memory for faster copies to the GPU; None: only when CUDA is available.
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        val_fraction: share of the pairs held out for validation when ``root`` has no ``val/`` folder.
        split_seed: seed of that split.
        num_classes: number of classes, background included; None: the number of class names.
        class_names: names of the classes in index order; None: ``root/classes.txt`` (one a line) if present,
            else ``"0"`` .. ``"C-1"`` (binary: ``background``, ``foreground``).
        ignore_index: mask value of unlabelled pixels (no loss, no metric); kept as is in targets.
        task: ``"multiclass"`` (masks of class indices) or ``"binary"`` (0/1 or 0/255 masks, one output channel);
            linked from the model's task by the CLI.
        positive_value: binary: the mask value of the foreground; None: 255 when the masks hold 0 and 255 but no
            1 (then 255 is foreground, not ignored: mark unlabelled pixels with another ``ignore_index``), else 1.
        mask_suffix: what a mask's name adds to its image's name (``"_mask"`` pairs ``a.jpg`` with ``a_mask.png``).
        backbone: model or encoder name, for the default normalization and size (linked from the model by the CLI).
        weights: weights name; its ``transforms()`` give the default normalization and size.
        image_size: side of the square training crops; None: from the weights (224 for classification
            backbones, 520 for torchvision's segmentation models).
        eval_size: side of the square that validation, test and predict images (and masks) are resized to;
            ``"image_size"``: the same as ``image_size``; None: full resolution (see ``eval_batch_size``).
            Predicted masks are resized back to each image's size by ``SegmentationMaskWriter``.
        mean: normalization mean; None: from the weights (ImageNet's otherwise).
        std: normalization std; None: likewise.
        train_crop: ``"resized"``: random resized crops (``crop_scale``, ``crop_ratio``); ``"crop"``: crops at the
            image's own scale, smaller images padded (mask padding is ``ignore_index``).
        crop_scale: area range of the resized crops.
        crop_ratio: aspect range of the resized crops.
        hflip: random horizontal flips in training.
        vflip: random vertical flips in training (aerial or medical images).
        train_augment: False trains on the evaluation pipeline (no random crop or flip).
        train_transform: a full replacement of the training pipeline, called as ``t(image, mask)`` on a
            ``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask``; it must normalize the image.
        eval_transform: a full replacement of the evaluation pipeline, likewise (also called as ``t(image)`` in predict).
        predict_root: folder of images to predict (recursively); None: the validation set.
        palette: one RGB colour per class for written masks and overlays; None: the palette of the training
            masks when they are palette PNGs, else Pascal VOC's colour map.
        demo: ``"digits_seg"`` writes the offline demo (scikit-learn's digit scans on 64x64 canvases, 11 classes)
            into ``root`` if missing.
        check_masks: read every mask at set-up to check sizes and values; turn off for very large data sets that
            are known good (binary 0/255 masks then need ``positive_value: 255``).

    Raises:
        FileNotFoundError: ``root``, one of its folders or ``predict_root`` does not exist.
        ValueError: no images, unmatched images or masks, unknown number of classes, bad options; at set-up,
            masks of the wrong size, format or values.

    Example::

        dm = SegmentationDataModule("data/digits_seg", demo="digits_seg", image_size=64, batch_size=16)
        dm.num_classes, dm.class_names[:3]  # (11, ['background', '0', '1'])
    """

    TEST_LAYOUT = "test/images/ and test/masks/"

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        task: Literal["multiclass", "binary"] = "multiclass",
        positive_value: int | None = None,
        mask_suffix: str = "",
        backbone: str | None = None,
        weights: str | None = None,
        image_size: int | None = None,
        eval_size: int | Literal["image_size"] | None = "image_size",
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        train_crop: Literal["resized", "crop"] = "resized",
        crop_scale: tuple[float, float] = (0.25, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        vflip: bool = False,
        train_augment: bool = True,
        train_transform: nn.Module | None = None,
        eval_transform: nn.Module | None = None,
        predict_root: str | None = None,
        palette: list[tuple[int, int, int]] | None = None,
        demo: Literal["digits_seg"] | None = None,
        check_masks: bool = True,
    ) -> None:
        super().__init__()
        self._check_options(batch_size, eval_batch_size, num_workers, val_fraction, task, demo, train_crop, eval_size, image_size)
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        if demo == "digits_seg":
            write_digit_segmentation(self.root)
        self.task = task
        self.ignore_index = ignore_index
        self.positive_value = positive_value
        self._set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self.eval_batch_size = eval_batch_size or batch_size
        self._check_predict_root()
        self.train_pairs, self.val_pairs, self.test_pairs = self._scan(val_fraction, split_seed, mask_suffix)
        self.class_names = read_class_names(self.root, class_names, num_classes, task)
        # Saved resolved, so that the model's hyperparameters (filled in from these) agree with the data's
        # (Lightning refuses to log hyperparameters of the same name with different values).
        self.save_hyperparameters({**self.hparams, "num_classes": self.num_classes, "class_names": list(self.class_names)})
        self.palette = self._palette(palette)
        self.preprocessing = configured_preprocessing(backbone, weights, image_size, None, mean, std, square=True)
        self.eval_size = self.preprocessing.crop_size if eval_size == "image_size" else eval_size
        pre = self.preprocessing
        self.eval_transform = eval_transform or segmentation_eval_transform(self.eval_size, pre.mean, pre.std, pre.interpolation)
        if train_transform is None and train_augment:
            train_transform = segmentation_train_transform(
                pre.crop_size, pre.mean, pre.std, train_crop, crop_scale, crop_ratio, hflip, vflip, ignore_index, pre.interpolation
            )
        self.train_transform = train_transform or self.eval_transform
        rank_zero_info(f"{self.root}: {len(self.train_pairs)} training / {len(self.val_pairs)} validation image-mask pairs, {self.num_classes} classes")

    @staticmethod
    def _check_options(batch_size, eval_batch_size, num_workers, val_fraction, task, demo, train_crop, eval_size, image_size) -> None:
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"`batch_size` and `eval_batch_size` must be >= 1, got {batch_size} and {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        check_val_fraction(val_fraction)
        if task not in ("multiclass", "binary"):
            raise ValueError(f"Unknown segmentation task '{task}'; choose multiclass or binary.")
        if demo not in (None, "digits_seg"):
            raise ValueError(f"Unknown demo data set '{demo}'; the segmentation demo is 'digits_seg'.")
        if train_crop not in ("resized", "crop"):
            raise ValueError(f"`train_crop` must be 'resized' or 'crop', got {train_crop!r}.")
        for name, size in (("image_size", image_size), ("eval_size", eval_size)):
            if isinstance(size, int) and size < 1:
                raise ValueError(f"`{name}` must be >= 1, got {size}.")

    @property
    def num_train_samples(self) -> int:
        """Number of training image/mask pairs."""
        return len(self.train_pairs)

    @property
    def class_counts(self) -> list[int] | None:
        """Labelled pixels per class in the training masks (binary: ``[background, foreground]``), for loss weights.

        Reads the masks (the set-up check, done once, errors included); None with ``check_masks: false``.
        """
        if not self.hparams.check_masks:
            return None
        self.validate_masks()
        totals: dict[int, int] = {}
        for info in self._infos[: len(self.train_pairs)]:
            for value, count in zip(info.values, info.counts):
                totals[value] = totals.get(value, 0) + count
        if self.task == "binary":
            return [totals.get(0, 0), totals.get(self.positive_value, 0)]
        return [totals.get(i, 0) for i in range(self.num_classes)]

    def _scan(self, val_fraction: float, seed: int, suffix: str) -> tuple[list, list, list]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"Data folder '{self.root}' does not exist. Check `data.root` (expected root/images/ and root/masks/, or root/train/ and root/val/).")
        train_dir, val_dir, test_dir = self.root / "train", self.root / "val", self.root / "test"
        if train_dir.is_dir():
            train = list_pairs(train_dir / "images", train_dir / "masks", suffix)
            if not val_dir.is_dir():
                raise FileNotFoundError(f"'{self.root}' has train/ but no val/ folder: add val/images/ and val/masks/, or put images/ and masks/ directly in root to split by `val_fraction`.")
            val = list_pairs(val_dir / "images", val_dir / "masks", suffix)
        else:
            if not (self.root / "images").is_dir():
                raise FileNotFoundError(f"'{self.root}' has neither images/ nor train/: put the images in {self.root}/images/ and the masks in {self.root}/masks/.")
            pairs = list_pairs(self.root / "images", self.root / "masks", suffix)
            if val_dir.is_dir():
                train, val = pairs, list_pairs(val_dir / "images", val_dir / "masks", suffix)
            else:
                train, val = split_pairs(pairs, val_fraction, seed)
        test = list_pairs(test_dir / "images", test_dir / "masks", suffix) if test_dir.is_dir() else []
        log.info("%s: %d train / %d val / %d test pairs", self.root, len(train), len(val), len(test))
        return train, val, test

    def _palette(self, palette: list[tuple[int, int, int]] | None) -> list[Color]:
        if palette is not None:
            if len(palette) != self.num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
                raise ValueError(f"`data.palette` needs {self.num_classes} RGB colours (0-255 each), one per class; got {palette}.")
            return [tuple(int(v) for v in c) for c in palette]
        return read_palette(self.train_pairs[0][1], self.num_classes) or default_palette(self.num_classes)

    def validate_masks(self) -> None:
        """Read every mask once (rank 0 under DDP): sizes, formats and values; decides binary ``positive_value``.

        Raises:
            ValueError: some masks are unusable (all counted, the first 20 listed with their reasons).
        """
        if getattr(self, "_checked", False):
            return
        binary = self.task == "binary"
        if not self.hparams.check_masks:
            self.positive_value = self.positive_value or 1
            self._checked = True
            return
        pairs = self.train_pairs + self.val_pairs + self.test_pairs
        infos = scan_once(lambda: scan_masks(pairs), self.trainer)  # every process lists the same pairs: one scan serves all
        self._infos = infos
        if self.positive_value is None:
            self.positive_value = binary_positive_value(infos[: len(self.train_pairs)], self.ignore_index) if binary else 1
        allowed = allowed_values(self.num_classes, self.ignore_index, binary, self.positive_value)
        problems = mask_problems(infos, allowed)
        if problems:
            expected = f"0, {self.positive_value} or {self.ignore_index}" if binary else f"0-{self.num_classes - 1} or {self.ignore_index} (ignore_index)"
            raise ValueError(
                format_problems(f"of {len(pairs)} masks cannot be used (values must be {expected}; masks the size of their image)", problems)
                + "\nFix these masks, or the class count (`data.num_classes`, classes.txt) or `data.ignore_index`."
            )
        self._checked = True

    @override
    def _dataset(self, pairs: Sequence[Pair], transform: Callable) -> SegmentationDataset:
        return SegmentationDataset(pairs, transform, self.task == "binary", self.positive_value, self.ignore_index)

    @override
    def _check_files(self) -> None:
        self.validate_masks()

    @override
    def _splits(self) -> tuple[list, list, list]:
        return self.train_pairs, self.val_pairs, self.test_pairs

    @override
    def _predict_items(self, images: list[Path]) -> list[Pair]:
        if not images:
            raise ValueError(f"No images under `predict_root` '{self.predict_root}'.")
        return [(str(p), None) for p in images]

    @override
    def _collate(self, train: bool) -> Callable:
        return collate_same_size

    @override
    def _eval_batch_size(self) -> int:
        return self.eval_batch_size

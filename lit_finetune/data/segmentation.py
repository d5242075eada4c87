"""``SegmentationDataModule``: folders of images and masks with matching names, ready for training.

Layouts (masks named like their images, any image extension, PNG masks; sub-folders allowed)::

    root/images/<name>.jpg   root/masks/<name>.png            split by val_fraction with split_seed
    root/train/images/...    root/train/masks/...              or fixed splits
    root/val/images/...      root/val/masks/...
    root/test/images/...     root/test/masks/...               (optional)
    root/classes.txt                                           (optional) one class name a line

A sample is a dict: ``image`` (float ``(3, H, W)``, normalized), ``target`` (int64 ``(H, W)`` class indices,
``ignore_index`` for unlabelled pixels; binary: 0/1), ``index``, ``path`` and ``original_size`` (the image file's
``(height, width)``). Images and masks go through the same random crop and flip in training; evaluation
resizes the image only and keeps the mask as stored (:mod:`lit_finetune.data.segmentation_transforms`), and
batches of mixed sizes are padded. Pairing by name: :mod:`lit_finetune.data.mask_pairs`; what mask values mean:
the task's rule (:mod:`lit_finetune.tasks.segmentation_masks`); the cached pre-training check:
:mod:`lit_finetune.data.mask_scan`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.data.base import FolderDataModule, check_val_fraction
from lit_finetune.data.check import scan_once
from lit_finetune.data.decode import read_image
from lit_finetune.data.folder import BadImageError
from lit_finetune.data.mask_pairs import Pair, list_pairs, split_pairs
from lit_finetune.data.mask_scan import cached_scan
from lit_finetune.data.masks import MaskInfo, default_palette, format_problems, read_mask, read_palette
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.data.segmentation_transforms import PadCollate, segmentation_eval_transform, segmentation_train_transform
from lit_finetune.models.preprocessing import configured_preprocessing
from lit_finetune.tasks.segmentation_masks import ClassMasks, mask_rule

__all__ = [
    "Pair",
    "SegmentationDataModule",
    "SegmentationDataset",
    "list_pairs",
    "segmentation_eval_transform",
    "segmentation_train_transform",
    "split_pairs",
]

log = logging.getLogger(__name__)

Color = tuple[int, int, int]


class SegmentationDataset(Dataset):
    """``(image, mask)`` file pairs read as dicts ``{image, target, index, path, original_size}``.

    Args:
        pairs: image files and their mask files; a None mask gives a sample without ``target`` (predict).
        transform: called as ``transform(image, mask)`` on a ``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask``
            (int64 ``(H, W)``), or ``transform(image)`` without a mask; returns the same.
        masks: the task's rule that turns stored mask values into targets
            (:mod:`lit_finetune.tasks.segmentation_masks`); None: class indices as stored.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        transform: Callable | None = None,
        masks: ClassMasks | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.masks = masks or ClassMasks()

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, path: str) -> tv_tensors.Image:
        try:
            image = read_image(path)  # JPEGs through torchvision.io.decode_jpeg (faster), others through PIL
            return image if isinstance(image, tv_tensors.Image) else tv_tensors.Image(F.pil_to_tensor(image))
        except Exception as err:
            # Raised inside a dataloader worker: say which file and what to do in the first line.
            raise BadImageError(
                f"Cannot read image '{path}': {type(err).__name__}: {err}. List unreadable files with `lit-finetune check-data <root>`."
            ) from err

    def _mask(self, path: str, image_size: tuple[int, int]) -> tv_tensors.Mask:
        values = read_mask(path)
        if tuple(values.shape) != image_size:
            raise ValueError(
                f"Mask '{path}' is {values.shape[0]}x{values.shape[1]} but its image is {image_size[0]}x{image_size[1]} (HxW): they must match."
            )
        return tv_tensors.Mask(torch.from_numpy(self.masks.to_target(values)))

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


class SegmentationDataModule(FolderDataModule):
    """Images and masks on disk as train/val/test/predict dataloaders of dict samples.

    The folders are listed when the module is created (a missing folder, no images, an image without a
    mask or a mask without an image are errors then); at ``fit`` set-up every pair is checked once (on global
    rank 0 under DDP; cached by file size and modification time) and a mask of another size than its image, an
    unreadable or RGB mask, an image that does not decode, and mask values the task's rule refuses stop the
    run before training, every offender counted and the first 20 listed.

    Args:
        root: the data folder (see the module docstring for the layouts).
        batch_size: samples per training batch (per process under DDP).
        eval_batch_size: samples per validation/test/predict batch; None: ``batch_size``. Images and masks of
            different sizes are padded to one size in a batch (masks with ``ignore_index``; never scored).
        num_workers: dataloader worker processes.
        pin_memory: page-locked host memory for faster copies to the GPU; None: only when CUDA is available.
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        val_fraction: share of the pairs held out for validation when ``root`` has no ``val/`` folder.
        split_seed: seed of that split.
        num_classes: number of classes, background included; None: the number of class names.
        class_names: names of the classes in index order; None: ``root/classes.txt`` (one a line) if present,
            else ``"0"`` .. ``"C-1"`` (binary: ``background``, ``foreground``).
        ignore_index: mask value of unlabelled pixels (no loss, no metric; the command line hands it to the
            model); None: 255 for class-index masks, -1 for binary masks (a value no mask file holds: every pixel is labelled).
        task: ``"multiclass"`` (masks of class indices) or ``"binary"`` (0 background, any other value foreground:
            0/1 and 0/255 masks as they are); set from ``model.task`` by the command line (set that one).
        positive_value: binary: the only mask value that is foreground (other non-zero values are then errors);
            None: every value other than 0 and ``ignore_index``.
        mask_suffix: what a mask's name adds to its image's name (``"_mask"`` pairs ``a.jpg`` with ``a_mask.png``).
        backbone: model or encoder name, for the default normalization and size (linked from the model by the CLI).
        weights: weights name; its ``transforms()`` give the default normalization and size.
        image_size: side of the square training crops; None: from the weights (224 for classification
            backbones, 520 for torchvision's segmentation models).
        eval_size: the shorter side that validation, test and predict images are resized to (aspect kept);
            ``"image_size"``: the same as ``image_size``; None: full resolution. Masks keep their size: the model's
            logits are resized to each mask's size and scored there, and ``SegmentationMaskWriter`` writes
            predicted masks at each image's size.
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
        check_masks: at ``fit`` set-up (once, on global rank 0), read every mask and decode every image to check
            sizes, values and files; the results are kept in ``root/.lit_finetune/mask_scan.json`` (by file size and
            modification time) so that later runs read only changed files. Turn off for data known to be good.

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
        ignore_index: int | None = None,
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
        self._check_options(batch_size, eval_batch_size, num_workers, val_fraction, demo, train_crop, eval_size, image_size)
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        if demo == "digits_seg":
            write_digit_segmentation(self.root)
        self.task = task
        self.masks = mask_rule(task, ignore_index, positive_value)
        self.ignore_index = self.masks.ignore_index
        self.positive_value = positive_value
        self._stage: str | None = None
        self._set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self.eval_batch_size = eval_batch_size or batch_size
        self._check_predict_root()
        self.train_pairs, self.val_pairs, self.test_pairs = self._scan(val_fraction, split_seed, mask_suffix)
        self.class_names = self.masks.class_names(self.root, class_names, num_classes)
        # Saved resolved, so that the model's hyperparameters (filled in from these) agree with the data's
        # (Lightning refuses to log hyperparameters of the same name with different values).
        self.palette = self._palette(palette)
        resolved = {"num_classes": self.num_classes, "class_names": list(self.class_names), "ignore_index": self.ignore_index}
        self.save_hyperparameters({**self.hparams, **resolved, "palette": [list(color) for color in self.palette]})
        self.preprocessing = configured_preprocessing(backbone, weights, image_size, None, mean, std, square=True)
        self.eval_size = self.preprocessing.crop_size if eval_size == "image_size" else eval_size
        pre = self.preprocessing
        self.eval_transform = eval_transform or segmentation_eval_transform(self.eval_size, pre.mean, pre.std, pre.interpolation)
        if train_transform is None and train_augment:
            train_transform = segmentation_train_transform(
                pre.crop_size, pre.mean, pre.std, train_crop, crop_scale, crop_ratio, hflip, vflip, self.ignore_index, pre.interpolation
            )
        self.train_transform = train_transform or self.eval_transform
        rank_zero_info(
            f"{self.root}: {len(self.train_pairs)} training / {len(self.val_pairs)} validation image-mask pairs, {self.num_classes} classes"
        )

    @staticmethod
    def _check_options(batch_size, eval_batch_size, num_workers, val_fraction, demo, train_crop, eval_size, image_size) -> None:
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"`batch_size` and `eval_batch_size` must be >= 1, got {batch_size} and {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        check_val_fraction(val_fraction)
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

        Known after the mask check of ``fit`` set-up (the command line creates the data module without reading
        a mask); None before it and with ``check_masks: false``. :meth:`count_pixels` reads them when asked.
        """
        infos = getattr(self, "_infos", None)
        if infos is None:
            return None
        totals: dict[int, int] = {}
        for info in infos[: len(self.train_pairs)]:
            for value, count in zip(info.values, info.counts, strict=False):
                totals[value] = totals.get(value, 0) + count
        return self.masks.class_counts(totals, self.num_classes)

    def count_pixels(self) -> list[int] | None:
        """:attr:`class_counts`, running the mask check first when it has not run (None with ``check_masks: false``)."""
        self.validate_masks()
        return self.class_counts

    def _scan(self, val_fraction: float, seed: int, suffix: str) -> tuple[list, list, list]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Data folder '{self.root}' does not exist. Check `data.root` (expected root/images/ and root/masks/, or root/train/ and root/val/)."
            )
        train_dir, val_dir, test_dir = self.root / "train", self.root / "val", self.root / "test"
        if train_dir.is_dir():
            train = list_pairs(train_dir / "images", train_dir / "masks", suffix)
            if not val_dir.is_dir():
                raise FileNotFoundError(
                    f"'{self.root}' has train/ but no val/ folder: add val/images/ and val/masks/, or put images/ and masks/ directly in root to split by `val_fraction`."
                )
            val = list_pairs(val_dir / "images", val_dir / "masks", suffix)
        else:
            if not (self.root / "images").is_dir():
                raise FileNotFoundError(
                    f"'{self.root}' has neither images/ nor train/: put the images in {self.root}/images/ and the masks in {self.root}/masks/."
                )
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
            return cast(list[Color], [tuple(int(v) for v in c) for c in palette])  # three values each, checked above
        return read_palette(self.train_pairs[0][1], self.num_classes) or default_palette(self.num_classes)

    def validate_masks(self) -> None:
        """Check every pair once (on global rank 0 under DDP): mask sizes, formats and values, images that do not decode.

        Results are cached in ``root/.lit_finetune/mask_scan.json`` by file size and modification time.

        Raises:
            ValueError: some pairs are unusable (all counted, the first 20 listed with their reasons).
        """
        if getattr(self, "_checked", False) or not self.hparams.check_masks:
            return
        pairs = self.train_pairs + self.val_pairs + self.test_pairs
        cache = self.root / ".lit_finetune" / "mask_scan.json"
        infos = scan_once(lambda: cached_scan(pairs, cache), self.trainer)  # every process lists the same pairs: one scan serves all
        problems = self._problems(infos)
        if problems:
            raise ValueError(
                format_problems(
                    f"of {len(pairs)} image/mask pairs cannot be used (mask values must be {self.masks.expected_values(self.num_classes)}; "
                    "masks the size of their image; images that decode)",
                    problems,
                )
                + "\nFix these files, or the class count (`data.num_classes`, classes.txt) or `data.ignore_index`."
            )
        self._infos: list[MaskInfo] = infos
        self._checked = True
        self._warn_mostly_ignored()

    def _problems(self, infos: Sequence[MaskInfo]) -> list[str]:
        problems = []
        for info in infos:
            bad = self.masks.bad_values(info.values, self.num_classes) if info.error is None else []
            if info.error is not None:
                problems.append(f"{info.mask}: {info.error}")
            elif bad:
                problems.append(f"{info.mask}: values {bad[:10]}{' ...' if len(bad) > 10 else ''}")
        return problems

    def _warn_mostly_ignored(self) -> None:
        """Most training pixels unlabelled is the sign of 0/255 binary masks read as class indices with 255 ignored."""
        ignored = total = 0
        for info in self._infos[: len(self.train_pairs)]:
            for value, count in zip(info.values, info.counts, strict=False):
                total += count
                ignored += count if value == self.ignore_index else 0
        if total and ignored / total > 0.5:
            rank_zero_warn(
                f"{ignored / total:.0%} of the training pixels hold `ignore_index` ({self.ignore_index}) and are neither trained nor "
                "scored. For 0/255 binary masks set `model.task: binary` (255 is then foreground); otherwise check `data.ignore_index`."
            )

    @override
    def _dataset(self, pairs: Sequence[Pair], transform: Callable) -> SegmentationDataset:
        return SegmentationDataset(pairs, transform, self.masks)

    @override
    def setup(self, stage: str) -> None:
        self._stage = stage
        super().setup(stage)

    @override
    def _check_files(self) -> None:
        # The full check runs before training only; validate/test/predict read just the files they use.
        fitting = self.trainer.state.fn == TrainerFn.FITTING if self.trainer is not None else self._stage == "fit"
        if fitting:
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
        return PadCollate(self.ignore_index)

    @override
    def _eval_batch_size(self) -> int:
        return self.eval_batch_size

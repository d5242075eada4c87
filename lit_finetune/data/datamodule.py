"""``ClassificationDataModule``: a user's labelled images (class folders, a labels CSV or a demo), ready for training."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import Sampler
from typing_extensions import override

from lit_finetune.data import transforms as tfm

# MAX_AUTO_WORKERS and auto_num_workers stay importable from here.
from lit_finetune.data.base import MAX_AUTO_WORKERS, FolderDataModule, auto_num_workers, check_val_fraction  # noqa: F401
from lit_finetune.data.check import find_bad_images_once, format_report
from lit_finetune.data.class_folders import ClassFolderSource
from lit_finetune.data.csv_source import LabelsCsvSource
from lit_finetune.data.demo_source import DEMOS, DemoSource
from lit_finetune.data.folder import ImageDataset
from lit_finetune.data.labelled import LabelledSource, subset
from lit_finetune.data.mixing import BatchMixer, MixingCollate
from lit_finetune.data.sampling import BalancedSampler, balanced_weights, describe_balance, expected_draws
from lit_finetune.data.transforms import Augment
from lit_finetune.models.preprocessing import configured_preprocessing
from lit_finetune.tasks.classification import task_type

log = logging.getLogger(__name__)


class ClassificationDataModule(FolderDataModule):
    """Labelled images on disk as train/val/test/predict dataloaders of dict samples (formerly ``ImageFolderDataModule``,
    a name that still works).

    The images and labels come from a source: class folders (:class:`~lit_finetune.data.class_folders.ClassFolderSource`),
    a labels CSV (:class:`~lit_finetune.data.csv_source.LabelsCsvSource`) or a demo
    (:class:`~lit_finetune.data.demo_source.DemoSource`); targets are encoded, counted, stratified, balanced and
    mixed as the task class says (:mod:`lit_finetune.tasks.targets`).

    ``root`` holds either ``train/`` and ``val/`` (and optionally ``test/``) folders of class folders,
    or the class folders directly, in which case ``val_fraction`` of each class is held out with a
    fixed ``split_seed``; there, a ``test/`` folder (and a ``val/`` one, which then replaces the held-out
    share) is a split of class folders, never a class. The folders are scanned when the module is created, so a missing folder, an
    empty class or a class present in ``val/`` but not in ``train/`` is reported before training.

    With ``labels_csv``, the classes come from a CSV file instead (one row per image under ``root``, its
    labels in a column or as one 0/1 column per class), which also serves multilabel data; see
    :func:`lit_finetune.data.csv_labels.read_labels_csv`. Targets follow ``task``: a class index
    (multiclass), a float multi-hot tensor of length ``num_classes`` (multilabel), a float tensor of shape
    ``(1,)`` (binary; the second class, or a 1 in the single class column, is positive).

    Args:
        root: the data folder.
        batch_size: samples per batch (per process under DDP).
        num_workers: dataloader worker processes, or ``"auto"``: the CPUs available to the process
            (``os.sched_getaffinity``) divided among the training processes of the machine, at most 8.
        pin_memory: page-locked host memory for faster copies to the GPU; None: only when CUDA is available.
        persistent_workers: keep workers alive between epochs (no start-up cost per epoch); applies only
            with ``num_workers > 0``.
        val_fraction: share of each class held out when ``root`` has no ``val/`` folder.
        split_seed: seed of that split.
        backbone: model name, used to pick default sizes (linked from ``model.backbone`` by the CLI).
        weights: weights name; its ``transforms()`` give the default sizes and normalization
            (linked from ``model.weights`` by the CLI).
        image_size: crop size; None: from the weights (224, or 299 for inception_v3).
        resize_size: short side before the center crop at evaluation; None: ``image_size * 256 / 224``.
        mean: normalization mean; None: from the weights (ImageNet's otherwise).
        std: normalization std; None: likewise.
        crop_scale: area range of ``RandomResizedCrop`` in training (all presets but ``none``).
        hflip: random horizontal flips in training (all presets but ``none``).
        train_augment: False trains on the evaluation pipeline (no random crop or flip): deterministic
            inputs, as linear probing with ``model.cache_features`` needs. It then excludes any ``augment``
            but the default and ``none``, ``random_erasing`` and mixing.
        augment: the training augmentation preset: ``"none"`` (the evaluation resize and center crop),
            ``"basic"`` (``RandomResizedCrop`` with ``crop_scale``, a flip if ``hflip``), or ``basic`` followed by
            torchvision's ``"randaugment"``, ``"trivialaugment"`` (``TrivialAugmentWide``) or ``"autoaugment"``
            (ImageNet policy). See :func:`lit_finetune.data.transforms.train_transform`.
        random_erasing: probability of ``RandomErasing`` of one rectangle of each normalized training image.
        mixup_alpha: MixUp of training batches with ``lam ~ Beta(alpha, alpha)``; 0: off (0.2 is common).
        cutmix_alpha: CutMix of training batches, likewise; 0: off (1.0 is common). Both set: each batch takes
            one of them at random. Targets become soft (multiclass: class probabilities; multilabel and binary:
            the labels mixed by the same weight); see :mod:`lit_finetune.data.mixing`.
        sampler: ``"random"`` (shuffle) or ``"balanced"``: draw training images with replacement, inversely to
            their class's frequency, as many per epoch as the set holds; see :mod:`lit_finetune.data.sampling`.
        train_fraction: train on this share of the training images, chosen per class (stratified) with
            ``split_seed``; multilabel: a seeded random share. Validation and test sets are kept whole.
        train_transform: a full replacement of the training pipeline (any transforms v2 module); ``augment``
            and ``random_erasing`` must then stay at their defaults (mixing still applies to batches).
        eval_transform: a full replacement of the evaluation pipeline.
        predict_root: folder of images to predict (recursively, any layout); None: the validation set.
        demo: ``"digits"`` writes scikit-learn's digits as PNG class folders into ``root`` if missing;
            ``"digit_pairs"`` writes images of two or three digits and ``root/labels.csv`` (multilabel;
            ``labels_csv`` and ``split_column`` then default to that file and its ``split`` column).
        check_images: decode every image once at set-up (in threads, JPEGs at reduced scale) to find
            unreadable files before training; turn off for very large data sets that are known good.
        bad_images: what to do with unreadable files (empty, truncated, corrupt, not images) found by that
            scan: ``"skip"`` them with a warning that lists them, or ``"error"``: stop before training.
            ``lit-finetune check-data <root>`` lists them without training.
        labels_csv: a CSV of image paths (relative to ``root``) and their labels; None: class folders.
        image_column: the CSV column of image paths, exactly as the files are named under ``root``.
        label_column: the CSV column of labels separated by ``label_separator`` (``"cat dog"``); None: one
            0/1 column per class (``class_columns``).
        label_separator: separator of the labels in ``label_column``.
        class_columns: the 0/1 class columns when ``label_column`` is None, in class order; None: every
            column except the image and split columns.
        split_column: the CSV column saying ``train``, ``val`` or ``test`` for each row, or a boolean column such as
            fastai's ``is_valid`` (true/1/yes: validation, false/0/no: training); None: split by ``val_fraction``
            with ``split_seed`` (stratified for multiclass and binary).
        task: ``"multiclass"``, ``"multilabel"`` (only with ``labels_csv``) or ``"binary"`` (two class
            folders, two CSV labels or one CSV class column); linked from ``model.task`` by the CLI.

    Raises:
        FileNotFoundError: ``root``, ``predict_root``, ``labels_csv`` or an image it names does not exist.
        ValueError: no images, an empty class folder, a class folder missing from ``train/``, an unknown CSV
            column, a row without the labels its task needs, a bad split value, bad or conflicting options.

    Example::

        dm = ClassificationDataModule("data/hymenoptera_data", batch_size=16, weights="DEFAULT", backbone="resnet18")
        dm.class_names  # ['ants', 'bees']
        # A small-data recipe: stronger augmentation, mixed batches, balanced classes.
        dm = ClassificationDataModule("data/x", augment="trivialaugment", random_erasing=0.25, mixup_alpha=0.2,
                                   cutmix_alpha=1.0, sampler="balanced", num_workers="auto")
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        num_workers: int | Literal["auto"] = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        backbone: str | None = None,
        weights: str | None = None,
        image_size: int | None = None,
        resize_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: bool = True,
        train_augment: bool = True,
        train_transform: nn.Module | None = None,
        eval_transform: nn.Module | None = None,
        predict_root: str | None = None,
        demo: str | None = None,
        check_images: bool = True,
        bad_images: Literal["skip", "error"] = "skip",
        labels_csv: str | None = None,
        image_column: str = "image",
        label_column: str | None = "labels",
        label_separator: str = " ",
        class_columns: list[str] | None = None,
        split_column: str | None = None,
        task: Literal["multiclass", "multilabel", "binary"] = "multiclass",
        augment: Augment = "basic",
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        sampler: Literal["random", "balanced"] = "random",
        train_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"`num_workers` must be an int >= 0 or 'auto', got {num_workers!r}.")
        if sampler not in ("random", "balanced"):
            raise ValueError(f"`sampler` must be 'random' or 'balanced', got {sampler!r}.")
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"`train_fraction` must be in (0, 1], got {train_fraction}.")
        check_val_fraction(val_fraction)
        if demo is not None and demo not in DEMOS:
            raise ValueError(f"Unknown demo data set '{demo}'; the ones available are 'digits' and 'digit_pairs'.")
        self.task_type = task_type(task)
        if bad_images not in ("skip", "error"):
            raise ValueError(f"`bad_images` must be 'skip' or 'error', got {bad_images!r}.")
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        self.task = task
        self._set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self._read_samples(self._source(demo, labels_csv, val_fraction, split_seed), split_seed)
        self.preprocessing = configured_preprocessing(backbone, weights, image_size, resize_size, mean, std)
        self.eval_transform = eval_transform or tfm.eval_transform(self.preprocessing)
        self.train_transform = self._train_transform(train_transform)
        self.mixer = BatchMixer(mixup_alpha, cutmix_alpha, self.num_classes, self.task_type) if mixup_alpha or cutmix_alpha else None
        if sampler == "balanced":
            self._describe_balance()

    @property
    def class_counts(self) -> list[int]:
        """Training images per class in ``class_names`` order (multiclass), positives per class (multilabel),
        or ``[negatives, positives]`` (binary, also with a single class column)."""
        return self.task_type.class_counts([target for _, target in self.train_samples], self.num_classes)

    @property
    def num_train_samples(self) -> int:
        """Number of training images (the total that multilabel ``class_counts`` are positives out of)."""
        return len(self.train_samples)

    def _source(self, demo: str | None, labels_csv: str | None, val_fraction: float, seed: int) -> LabelledSource:
        """Where the labelled images come from: a demo (written first), a labels CSV, or class folders."""
        h = self.hparams
        csv = {
            "image_column": h.image_column,
            "label_column": h.label_column,
            "label_separator": h.label_separator,
            "class_columns": h.class_columns,
        }
        csv.update(path=labels_csv, split_column=h.split_column)
        if demo is not None:
            return DemoSource(demo, self.root, val_fraction, seed, csv_options=csv)
        if labels_csv is not None:
            return LabelsCsvSource(root=self.root, val_fraction=val_fraction, split_seed=seed, **csv)
        return ClassFolderSource(self.root, val_fraction, seed)

    def _read_samples(self, source: LabelledSource, seed: int) -> None:
        """Class names and train/val/test samples of ``source`` (training: ``train_fraction`` of them), with targets for ``task``."""
        splits = source.read(self.task_type)
        self._check_predict_root()
        fraction = self.hparams.train_fraction
        self.class_names, self.val_samples, self.test_samples = splits.class_names, splits.val, splits.test
        self.train_samples = subset(splits.train, fraction, seed, stratified=self.task_type.single_label) if fraction < 1 else splits.train
        counts = ", ".join(f"{name}={count}" for name, count in zip(self._count_names(), self.class_counts, strict=False))
        share = f" ({fraction:g} of them, `train_fraction`)" if fraction < 1 else ""
        rank_zero_info(f"{self.root}: {len(self.train_samples)} training images{share}; per class: {counts}")

    def _count_names(self) -> list[str]:
        """Names of the entries of ``class_counts``."""
        return self.task_type.count_names(self.class_names)

    def _train_transform(self, custom: nn.Module | None) -> nn.Module:
        """The training pipeline: ``train_transform`` if given, the evaluation one without ``train_augment``, else the preset."""
        h = self.hparams
        changed = [name for name, value in (("augment", h.augment != "basic"), ("random_erasing", h.random_erasing > 0)) if value]
        if custom is not None:
            if changed:
                raise ValueError(
                    f"`train_transform` replaces the whole training pipeline: leave {changed} at the default or put them in it."
                )
            return custom
        if not h.train_augment:
            if h.augment not in ("basic", "none") or h.random_erasing > 0 or h.mixup_alpha or h.cutmix_alpha:
                raise ValueError(
                    "`train_augment: false` trains on the evaluation pipeline (deterministic inputs): it cannot take an `augment` "
                    "preset, `random_erasing` or mixing. Set `train_augment: true` to use them."
                )
            return cast(nn.Module, self.eval_transform)  # a transforms pipeline module
        return tfm.train_transform(self.preprocessing, h.crop_scale, h.hflip, h.augment, h.random_erasing)

    def _describe_balance(self) -> None:
        """Print, on rank zero, the class counts and what a balanced epoch draws of each class."""
        targets = [target for _, target in self.train_samples]
        weights = balanced_weights(targets, self.task_type)
        draws = expected_draws(targets, self.task_type, weights, self.num_classes)
        rank_zero_info(describe_balance(self._count_names(), self.class_counts, draws))

    def _drop_bad_images(self) -> None:
        """Scan all samples once; skip the unreadable ones or raise, as ``bad_images`` says."""
        if not self.hparams.check_images or getattr(self, "bad_files", None) is not None:
            return
        lists = {"train": self.train_samples, "val": self.val_samples, "test": self.test_samples}
        paths = [path for samples in lists.values() for path, _ in samples]
        bad = find_bad_images_once(paths, self.trainer)  # rank 0 scans, the others get its result
        self.bad_files = bad
        if not bad:
            return
        report = format_report(bad, len(paths))
        if self.hparams.bad_images == "error":
            raise ValueError(f"{report}\nFix or remove these files, or set `data.bad_images: skip` to train without them.")
        rank_zero_warn(f"{report}\nThese files are skipped (`data.bad_images: skip`).")
        bad_paths = {b.path for b in bad}
        for name, samples in lists.items():
            kept = [s for s in samples if s[0] not in bad_paths]
            if samples and not kept:
                raise ValueError(f"Every {name} image under '{self.root}' is unreadable: {report}")
            setattr(self, f"{name}_samples", kept)

    @override
    def _check_files(self) -> None:
        self._drop_bad_images()

    @override
    def _splits(self) -> tuple[list, list, list]:
        return self.train_samples, self.val_samples, self.test_samples

    @override
    def _dataset(self, items: Sequence[tuple[str, Any]], transform: Callable) -> ImageDataset:
        return ImageDataset(items, transform)

    @override
    def _predict_items(self, images: list[Path]) -> list[tuple[str, int]]:
        return [(str(p), -1) for p in images]

    @override
    def _collate(self, train: bool) -> Callable | None:
        """With mixing, every training batch is mixed in the workers."""
        return MixingCollate(self.mixer) if train and self.mixer is not None else None

    @override
    def _train_sampler(self) -> Sampler | None:
        """The balanced sampler over the training set (after unreadable files were dropped), or None: shuffle."""
        if self.hparams.sampler != "balanced":
            return None
        return BalancedSampler(balanced_weights(self.train_set.targets, self.task_type))  # type: ignore[attr-defined]  # an ImageDataset


ImageFolderDataModule = ClassificationDataModule
"""The former name of :class:`ClassificationDataModule`, kept for configs and imports that use it."""

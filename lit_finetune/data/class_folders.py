"""``ClassFolderSource``: labelled samples from class folders, ``root/<class>/<image>``.

``root`` holds either ``train/`` and ``val/`` (and optionally ``test/``) folders of class folders, or the
class folders directly; there, ``val_fraction`` of each class is held out with ``split_seed``, and ``test/``
(and ``val/``, which then replaces the held-out share) is a split of class folders, never a class.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lit_finetune.data.folder import scan_image_folder
from lit_finetune.data.labelled import LabelledSplits, Sample, split_validation
from lit_finetune.tasks.targets import ClassificationTargets

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("test", "val")
"""Folders directly under ``root`` that are splits, not classes."""


class ClassFolderSource:
    """Class folders under ``root`` as labelled train/val/test samples.

    Args:
        root: the data folder.
        val_fraction: share of each class held out when ``root`` has no ``val/`` folder.
        split_seed: seed of that split.

    Raises:
        FileNotFoundError: ``root`` is missing, or has ``train/`` but no ``val/``.
        ValueError: (:meth:`read`) no class folders, an empty class, a class missing from ``train/``, too few images
            to hold out a validation set, class folders that cannot give the task's labels.

    Example::

        splits = ClassFolderSource("data/hymenoptera_data").read(MulticlassTask)
        splits.class_names  # ['ants', 'bees']
    """

    def __init__(self, root: str | Path, val_fraction: float = 0.2, split_seed: int = 0) -> None:
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def read(self, task: type[ClassificationTargets]) -> LabelledSplits:
        """Scan the folders and encode each sample's class as ``task`` stores targets."""
        if not task.single_label:
            raise ValueError(
                f"task '{task.name}' needs labels that class folders cannot give: set `data.labels_csv` to a CSV of images and their labels."
            )
        classes, train, val, test = self._scan()
        task.check_class_names(classes, f"'{self.root}' (class folders)")

        def encode(samples: list[tuple[str, int]]) -> list[Sample]:
            return [(path, task.encode([target], len(classes))) for path, target in samples]

        return LabelledSplits(classes, encode(train), encode(val), encode(test))

    def _scan(self) -> tuple[list[str], list, list, list]:
        train_dir, val_dir, test_dir = self.root / "train", self.root / "val", self.root / "test"
        if train_dir.is_dir():
            classes, train = scan_image_folder(train_dir)
            if not val_dir.is_dir():
                raise FileNotFoundError(
                    f"'{self.root}' has train/ but no val/ folder. Add val/<class>/<images>, or put the class folders "
                    "directly in root to split by `val_fraction`."
                )
            _, val = scan_image_folder(val_dir, classes)
        else:
            classes, samples = self._scan_class_folders()
            if val_dir.is_dir():
                train, val = samples, scan_image_folder(val_dir, classes)[1]
            else:
                train, val = split_validation(samples, self.val_fraction, self.split_seed)
            if not val:
                raise ValueError(f"Too few images under '{self.root}' to hold out a validation set: add at least two images per class.")
        test = scan_image_folder(test_dir, classes)[1] if test_dir.is_dir() else []
        log.info("%s: %d classes, %d train / %d val / %d test images", self.root, len(classes), len(train), len(val), len(test))
        return classes, train, val, test

    def _scan_class_folders(self) -> tuple[list[str], list[tuple[str, int]]]:
        """Class folders directly under ``root``; ``test/`` and ``val/`` are splits there, not classes."""
        found, samples = scan_image_folder(self.root)
        classes = [name for name in found if name not in SPLIT_FOLDERS]
        if not classes:
            raise ValueError(
                f"'{self.root}' has no class folders besides {sorted(set(found))}: put the images in {self.root}/<class name>/<image>."
            )
        index = {found.index(name): i for i, name in enumerate(classes)}
        return classes, [(path, index[target]) for path, target in samples if target in index]

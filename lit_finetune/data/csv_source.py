"""``LabelsCsvSource``: labelled samples from a CSV of image paths and labels (see :mod:`lit_finetune.data.csv_labels`)."""

from __future__ import annotations

import logging
from pathlib import Path

from lit_finetune.data.csv_labels import read_labels_csv
from lit_finetune.data.labelled import LabelledSplits, Sample, split_validation
from lit_finetune.tasks.targets import ClassificationTargets

log = logging.getLogger(__name__)


class LabelsCsvSource:
    """The rows of a labels CSV as labelled train/val/test samples.

    Rows without a split (no ``split_column``) are split by ``val_fraction`` with ``split_seed``: per class for
    tasks of one label a sample, a seeded share otherwise.

    Args:
        path: the CSV file.
        root: the folder the image paths are relative to.
        image_column: the column of image paths.
        label_column: the column of labels separated by ``label_separator``; None: one 0/1 column per class.
        label_separator: separator of the labels in ``label_column``.
        class_columns: the 0/1 class columns when ``label_column`` is None; None: every other column.
        split_column: the column saying ``train``, ``val`` or ``test``; None: split by ``val_fraction``.
        val_fraction: share held out for validation without a split column.
        split_seed: seed of that split.

    Raises:
        FileNotFoundError, ValueError: (:meth:`read`) as :func:`~lit_finetune.data.csv_labels.read_labels_csv`, and
            a split without rows.

    Example::

        splits = LabelsCsvSource("data/digit_pairs/labels.csv", "data/digit_pairs", split_column="split").read(MultilabelTask)
    """

    def __init__(
        self,
        path: str | Path,
        root: str | Path,
        image_column: str = "image",
        label_column: str | None = "labels",
        label_separator: str = " ",
        class_columns: list[str] | None = None,
        split_column: str | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        self.path, self.root = Path(path), Path(root)
        self.columns = (image_column, label_column, label_separator, class_columns)
        self.split_column = split_column
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def read(self, task: type[ClassificationTargets]) -> LabelledSplits:
        """Read and check the CSV; each row's labels become a target as ``task`` stores them."""
        names, rows = read_labels_csv(self.path, self.root, *self.columns, split_column=self.split_column, task=task)
        splits: dict[str | None, list[Sample]] = {"train": [], "val": [], "test": [], None: []}
        for row in rows:
            splits[row.split].append((str(self.root / row.path), task.encode(row.classes, len(names))))
        if splits[None]:
            splits["train"], splits["val"] = split_validation(
                splits[None], self.val_fraction, self.split_seed, stratified=task.single_label
            )
            if not splits["train"] or not splits["val"]:
                raise ValueError(f"Too few rows in '{self.path}' to hold out a validation set: add rows or a split column.")
        for split in ("train", "val"):
            if not splits[split]:
                raise ValueError(f"No {split} rows in '{self.path}': column '{self.split_column}' must name some rows '{split}'.")
        log.info(
            "%s: %d classes, %d train / %d val / %d test images", self.path, len(names), *(len(splits[s]) for s in ("train", "val", "test"))
        )
        return LabelledSplits(names, splits["train"], splits["val"], splits["test"])

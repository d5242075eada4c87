"""``DemoSource``: a demo data set (:mod:`lit_finetune.data.demo`) written into ``root`` on first use, then read
like a user's data of the same layout."""

from __future__ import annotations

from pathlib import Path

from lit_finetune.data.class_folders import ClassFolderSource
from lit_finetune.data.csv_source import LabelsCsvSource
from lit_finetune.data.demo import write_digit_pairs, write_digits
from lit_finetune.data.labelled import LabelledSplits
from lit_finetune.tasks.targets import ClassificationTargets

DEMOS = ("digits", "digit_pairs")
"""``digits``: class folders of scikit-learn's digits; ``digit_pairs``: images of two or three digits and
``root/labels.csv`` (multilabel) with a ``split`` column."""


class DemoSource:
    """Write the demo ``name`` into ``root`` unless it is there, and read it: ``digits`` as class folders,
    ``digit_pairs`` through ``root/labels.csv`` and its ``split`` column.

    ``csv_options`` (those of :class:`~lit_finetune.data.csv_source.LabelsCsvSource` but ``path`` and ``root``)
    change how the CSV is read; a ``path`` there reads another CSV, also for ``digits``.

    Args:
        name: one of :data:`DEMOS`.
        root: the folder the demo is written to and read from.
        val_fraction: share of each class held out when the demo has no validation split.
        split_seed: seed of that split.
        csv_options: options of the CSV route; None: the demo's own.

    Raises:
        ValueError: an unknown demo name.

    Example::

        splits = DemoSource("digits", "data/digits").read(MulticlassTask)
    """

    def __init__(
        self, name: str, root: str | Path, val_fraction: float = 0.2, split_seed: int = 0, csv_options: dict | None = None
    ) -> None:
        if name not in DEMOS:
            raise ValueError(f"Unknown demo data set '{name}'; the ones available are {', '.join(repr(d) for d in DEMOS)}.")
        root = Path(root)
        options = dict(csv_options or {})
        if name == "digits":
            write_digits(root)
        else:
            write_digit_pairs(root)
            options["path"] = options.get("path") or root / "labels.csv"
            options["split_column"] = options.get("split_column") or "split"
        if options.get("path"):
            self.source: ClassFolderSource | LabelsCsvSource = LabelsCsvSource(
                root=root, val_fraction=val_fraction, split_seed=split_seed, **options
            )
        else:
            self.source = ClassFolderSource(root, val_fraction, split_seed)

    def read(self, task: type[ClassificationTargets]) -> LabelledSplits:
        """The demo's labelled splits, targets as ``task`` stores them."""
        return self.source.read(task)

"""How each segmentation task reads the masks on disk: the data side of the task layer.

``SegmentationDataModule`` asks one of these objects (never the task's name) what its masks mean:

- :class:`ClassMasks` (``task: multiclass``): stored values are class indices ``0 .. C-1``; ``ignore_index``
  (255 unless set) marks unlabelled pixels (VOC's object borders).
- :class:`BinaryMasks` (``task: binary``): 0 is background and every other value is foreground, so 0/1 and
  0/255 masks both work as they are; no stored value is ignored unless ``ignore_index`` is set (e.g. 128, or 255
  for 0/1 masks whose 255 marks unlabelled pixels): by default ``ignore_index`` is -1, which no mask file holds,
  and marks only the padding of crops and of batches of mixed sizes. ``positive_value`` restricts the foreground to one value; other
  non-zero values are then errors of the mask check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MULTICLASS_IGNORE_INDEX = 255
"""The unlabelled value of class-index masks when ``ignore_index`` is not set (Pascal VOC's)."""
BINARY_IGNORE_INDEX = -1
"""The unlabelled value of binary masks when ``ignore_index`` is not set: no PNG holds it (padding only)."""


def read_classes_txt(root: Path) -> list[str] | None:
    """The class names in ``root/classes.txt`` (one a line), or None without that file."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class ClassMasks:
    """Masks of class indices (``task: multiclass``).

    Args:
        ignore_index: stored value of unlabelled pixels; None: 255.
        positive_value: binary masks only; must be None here.

    Raises:
        ValueError: ``positive_value`` is set.
    """

    binary = False

    def __init__(self, ignore_index: int | None = None, positive_value: int | None = None) -> None:
        if positive_value is not None:
            raise ValueError(
                f"`data.positive_value` ({positive_value}) is for binary masks (`model.task: binary`); leave it unset for class-index masks."
            )
        self.ignore_index: int = MULTICLASS_IGNORE_INDEX if ignore_index is None else ignore_index
        self.positive_value: int | None = positive_value

    def class_names(self, root: Path, class_names: Sequence[str] | None, num_classes: int | None) -> list[str]:
        """Names from the config, else ``root/classes.txt``, else ``"0"`` .. ``"C-1"``.

        Raises:
            ValueError: neither names nor ``num_classes`` are given, they disagree, or fewer than 2 classes.
        """
        source, names = "data.class_names", list(class_names) if class_names else None
        if names is None and (found := read_classes_txt(root)) is not None:
            source, names = str(root / "classes.txt"), found
        if names is None:
            if num_classes is None:
                raise ValueError(
                    f"The number of classes is unknown: write the class names, one a line and background first, into "
                    f"'{root / 'classes.txt'}', or set `data.class_names` or `data.num_classes`."
                )
            names = [str(i) for i in range(num_classes)]
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"`data.num_classes` is {num_classes} but {source} names {len(names)} classes: make them agree.")
        return self._check_names(names, source)

    def _check_names(self, names: list[str], source: str) -> list[str]:
        if len(names) < 2:
            raise ValueError(f"Segmentation needs at least 2 classes (background and one more); {source} names {names}.")
        return names

    def to_target(self, values: np.ndarray) -> np.ndarray:
        """Stored values as training targets: unchanged."""
        return values

    def bad_values(self, values: Sequence[int], num_classes: int) -> list[int]:
        """The stored values of a mask that are neither a class nor ``ignore_index``."""
        return [v for v in values if not (0 <= v < num_classes or v == self.ignore_index)]

    def expected_values(self, num_classes: int) -> str:
        """The allowed values, as the mask check's error says them."""
        return f"0-{num_classes - 1} or {self.ignore_index} (ignore_index)"

    def class_counts(self, totals: Mapping[int, int], num_classes: int) -> list[int]:
        """Labelled pixels per class from pixel counts per stored value."""
        return [totals.get(i, 0) for i in range(num_classes)]


class BinaryMasks(ClassMasks):
    """Masks of background (0) and foreground (any other value, or ``positive_value``) (``task: binary``).

    Args:
        ignore_index: stored value of unlabelled pixels; None: -1 (no stored value: every pixel is labelled).
        positive_value: the only stored value that is foreground; None: every value other than 0 and ``ignore_index``.

    Raises:
        ValueError: ``positive_value`` is 0 or equal to ``ignore_index``.
    """

    binary = True

    def __init__(self, ignore_index: int | None = None, positive_value: int | None = None) -> None:
        if positive_value is not None and positive_value in (0, ignore_index):
            raise ValueError(
                f"`data.positive_value` ({positive_value}) must differ from the background 0 and from `data.ignore_index` ({ignore_index})."
            )
        self.ignore_index: int = BINARY_IGNORE_INDEX if ignore_index is None else ignore_index
        self.positive_value = positive_value

    def class_names(self, root: Path, class_names: Sequence[str] | None, num_classes: int | None) -> list[str]:
        """Two names: from the config or ``root/classes.txt``, else ``background``, ``foreground``.

        Raises:
            ValueError: ``num_classes`` is not 2, or another number of names is given.
        """
        if num_classes not in (None, 2):
            raise ValueError(
                f"task 'binary' has 2 classes (background, foreground), not num_classes={num_classes}. Use `model.task: multiclass`."
            )
        source, names = "data.class_names", list(class_names) if class_names else None
        if names is None and (found := read_classes_txt(root)) is not None:
            source, names = str(root / "classes.txt"), found
        return self._check_names(names or ["background", "foreground"], source)

    def _check_names(self, names: list[str], source: str) -> list[str]:
        if len(names) != 2:
            raise ValueError(
                f"task 'binary' needs 2 classes (background, foreground); {source} names {len(names)}. Use `model.task: multiclass`."
            )
        return names

    def _foreground(self, values: np.ndarray) -> np.ndarray:
        if self.positive_value is not None:
            return values == self.positive_value
        return (values != 0) & (values != self.ignore_index)

    def to_target(self, values: np.ndarray) -> np.ndarray:
        """Stored values as targets: 0 background, 1 foreground, ``ignore_index`` kept."""
        target = self._foreground(values).astype(np.int64)
        target[values == self.ignore_index] = self.ignore_index
        return target

    def bad_values(self, values: Sequence[int], num_classes: int) -> list[int]:
        """With ``positive_value``: the values other than 0, it and ``ignore_index``; else none."""
        if self.positive_value is None:
            return []
        return [v for v in values if v not in (0, self.positive_value, self.ignore_index)]

    def expected_values(self, num_classes: int) -> str:
        return f"0, {self.positive_value} or {self.ignore_index} (ignore_index)"

    def class_counts(self, totals: Mapping[int, int], num_classes: int) -> list[int]:
        """``[background, foreground]`` pixels."""
        values = np.array(list(totals), dtype=np.int64)
        counts = np.array(list(totals.values()), dtype=np.int64)
        foreground = self._foreground(values)
        return [int(counts[(values == 0)].sum()), int(counts[foreground].sum())]


MASK_RULES: dict[str, type[ClassMasks]] = {"multiclass": ClassMasks, "binary": BinaryMasks}


def mask_rule(task: str, ignore_index: int | None = None, positive_value: int | None = None) -> ClassMasks:
    """The mask rule of a segmentation task (``"multiclass"`` or ``"binary"``).

    Raises:
        ValueError: an unknown task, or options that do not fit it.
    """
    if task not in MASK_RULES:
        raise ValueError(f"Unknown segmentation task {task!r}; choose {' or '.join(MASK_RULES)} (`model.task`).")
    return MASK_RULES[task](ignore_index, positive_value)

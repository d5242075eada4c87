"""What a classification task means for the data: how labels become targets, and how targets are counted,
stratified, weighted for balanced sampling and mixed.

The task classes (:mod:`lit_finetune.tasks.classification`) inherit one of these. The methods are class methods:
the data modules call them while scanning, before the number of classes, and so the task object, exists.
Targets are stored per sample as :data:`Target` and batched by the dataset as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

Target = int | tuple[float, ...]
"""A sample's target as stored: a class index (multiclass), or floats (multi-hot for multilabel, ``(0.0,)`` /
``(1.0,)`` for binary) that the dataset returns as a float tensor."""


class ClassificationTargets:
    """The data side of a classification task (see the module docstring)."""

    name: str = ""
    single_label: bool = True
    """One label a sample: a labels CSV needs one per row, class folders can give them, splits are stratified per class."""
    one_class_column: bool = False
    """A single 0/1 class column of a labels CSV can hold the labels (its 1 marks the positive class)."""

    @classmethod
    def check_class_names(cls, names: Sequence[str], where: str) -> None:
        """Raise ``ValueError`` when ``names``, the classes found in ``where``, are too few or too many for the task."""

    @classmethod
    def encode(cls, classes: Sequence[int], num_classes: int) -> Target:
        """The stored target of a sample labelled with the class indices ``classes`` (of ``num_classes``)."""
        raise NotImplementedError

    @classmethod
    def label_groups(cls, target: Target) -> tuple[int, ...]:
        """The entries of :meth:`class_counts` that a stored target counts in (balanced sampling weighs by them)."""
        raise NotImplementedError

    @classmethod
    def count_names(cls, class_names: Sequence[str]) -> list[str]:
        """Names of the entries of :meth:`class_counts`."""
        return list(class_names)

    @classmethod
    def count_width(cls, num_classes: int) -> int:
        """Number of entries of :meth:`class_counts`."""
        return num_classes

    @classmethod
    def class_counts(cls, targets: Sequence[Target], num_classes: int) -> list[int]:
        """Samples per class (multiclass), positives per label (multilabel) or ``[negatives, positives]`` (binary)."""
        counts = [0] * cls.count_width(num_classes)
        for target in targets:
            for group in cls.label_groups(target):
                counts[group] += 1
        return counts

    @classmethod
    def mix_num_classes(cls, num_classes: int) -> int | None:
        """The ``num_classes`` torchvision's MixUp/CutMix one-hot encode batch targets with; None: they are float already."""
        return None

    @classmethod
    def mix_target(cls, target: Tensor) -> Tensor:
        """A batch target as MixUp/CutMix take it: float ``(N, C)`` (``(N, 1)`` for binary)."""
        return target.float().reshape(len(target), -1)


class MulticlassTargets(ClassificationTargets):
    """Class indices; at least two classes."""

    @classmethod
    def check_class_names(cls, names: Sequence[str], where: str) -> None:
        if len(names) < 2:
            raise ValueError(f"task 'multiclass' needs at least two classes; {where} has {list(names)}.")

    @classmethod
    def encode(cls, classes: Sequence[int], num_classes: int) -> Target:
        return int(classes[0])

    @classmethod
    def label_groups(cls, target: Target) -> tuple[int, ...]:
        return (int(target),)  # type: ignore[arg-type]

    @classmethod
    def mix_num_classes(cls, num_classes: int) -> int | None:
        if num_classes < 2:
            raise ValueError(f"Mixing multiclass targets needs num_classes >= 2, got {num_classes}.")
        return num_classes

    @classmethod
    def mix_target(cls, target: Tensor) -> Tensor:
        return target  # class indices: torchvision one-hot encodes them


class BinaryTargets(ClassificationTargets):
    """``(0.0,)``/``(1.0,)``: the second of two classes, or a 1 in a single class column, is positive."""

    one_class_column = True

    @classmethod
    def check_class_names(cls, names: Sequence[str], where: str) -> None:
        if len(names) != 2:
            raise ValueError(
                f"task 'binary' needs two classes (or one 0/1 class column in a CSV); {where} has {len(names)}: {list(names)}. "
                "Use task 'multiclass' or 'multilabel'."
            )

    @classmethod
    def encode(cls, classes: Sequence[int], num_classes: int) -> Target:
        positive = 0 if num_classes == 1 else 1
        return (1.0 if positive in classes else 0.0,)

    @classmethod
    def label_groups(cls, target: Target) -> tuple[int, ...]:
        return (int(round(target[0])),)  # type: ignore[index]

    @classmethod
    def count_names(cls, class_names: Sequence[str]) -> list[str]:
        return ["negative", "positive"]

    @classmethod
    def count_width(cls, num_classes: int) -> int:
        return 2


class MultilabelTargets(ClassificationTargets):
    """Multi-hot tuples of ``num_classes`` floats; no label is all negative."""

    single_label = False

    @classmethod
    def encode(cls, classes: Sequence[int], num_classes: int) -> Target:
        return tuple(1.0 if i in classes else 0.0 for i in range(num_classes))

    @classmethod
    def label_groups(cls, target: Target) -> tuple[int, ...]:
        return tuple(i for i, v in enumerate(target) if v > 0.5)  # type: ignore[arg-type]

"""What a classification data source gives its data module: class names and the samples of each split."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from lit_finetune.data.splits import seeded_split
from lit_finetune.tasks.targets import ClassificationTargets, Target

Sample = tuple[str, Target]
"""An image path and its stored target."""


@dataclass
class LabelledSplits:
    """Class names and the ``(path, target)`` samples of the train, val and test splits."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


class LabelledSource(Protocol):
    """A source of labelled images (class folders, a labels CSV, a demo): what the classification data module reads."""

    def read(self, task: type[ClassificationTargets]) -> LabelledSplits:
        """Class names and samples of each split, with targets encoded as ``task`` stores them."""
        ...


S = TypeVar("S", bound=tuple)
"""A sample: a tuple whose second item is its target."""


def _target(sample: tuple[Any, ...]) -> Hashable:
    return sample[1]


def split_validation(samples: Sequence[S], val_fraction: float, seed: int, stratified: bool = True) -> tuple[list[S], list[S]]:
    """``(train, val)``: ``val_fraction`` held out with ``seed``; ``stratified``: per class (samples of one label each,
    :attr:`~lit_finetune.tasks.targets.ClassificationTargets.single_label`), a class's only sample kept for training."""
    group = _target if stratified else None
    val, train = seeded_split(samples, val_fraction, seed, group=group, keep_single=True)
    return train, val


def subset(samples: Sequence[S], fraction: float, seed: int, stratified: bool = True) -> list[S]:
    """``fraction`` of ``samples`` chosen with ``seed``; ``stratified``: per class, at least one each."""
    group = _target if stratified else None
    return seeded_split(samples, fraction, seed, group=group)[0]


stratified_split = split_validation
"""``split_validation`` under its former name (stratified by default)."""

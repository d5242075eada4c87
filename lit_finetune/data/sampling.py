"""Class-balanced sampling of the training set: inverse-frequency weights and a weighted sampler.

``sampler: balanced`` draws each epoch as many training samples as the set holds, with replacement,
each with probability proportional to its weight:

- multiclass and binary: ``1 / (images of its class)``, so every class (binary: negatives and
  positives) is drawn about equally often;
- multilabel: ``1 / (images with its rarest label)``, images without any label counting as one more
  group. Rare labels are drawn more often; when labels co-occur no weighting balances them exactly.

Under DDP Lightning wraps the sampler in its ``DistributedSamplerWrapper``, which gives each process
its share of the sampler's draws: an epoch still holds as many samples in all. :class:`BalancedSampler`
draws from a generator seeded with ``seed + epoch`` (the run's ``seed_everything`` seed by default; Lightning
calls ``set_epoch``), so every process draws the same list and the processes' shares never overlap by
construction of the wrapper. Its epoch count is kept in checkpoints (through the data module's
``state_dict``), so a resumed run draws the epochs it has not drawn yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import WeightedRandomSampler

from lit_finetune.tasks.classification import task_type
from lit_finetune.tasks.targets import ClassificationTargets, Target

TaskSpec = str | type[ClassificationTargets]
"""A classification task by name (``"multiclass"``) or class (``MulticlassTask``)."""


def _task(task: TaskSpec) -> type[ClassificationTargets]:
    return task_type(task) if isinstance(task, str) else task


def balanced_weights(targets: Sequence[Target], task: TaskSpec) -> Tensor:
    """Per-sample weights of balanced sampling (see the module docstring for the rule per task).

    Args:
        targets: the training targets as stored: class indices (multiclass), ``(0.0,)``/``(1.0,)`` (binary)
            or multi-hot tuples (multilabel).
        task: ``"multiclass"``, ``"multilabel"`` or ``"binary"``, or the task class; its ``label_groups`` are the
            groups a target counts in.

    Raises:
        ValueError: no targets or an unknown task.

    Example::

        balanced_weights([0, 0, 0, 1], "multiclass")  # tensor([0.3333, 0.3333, 0.3333, 1.0000])
    """
    task = _task(task)
    if not targets:
        raise ValueError("Balanced sampling needs training samples; the training set is empty.")
    groups = [task.label_groups(t) for t in targets]
    counts: dict[int | None, int] = {}
    for labels in groups:
        for label in labels or (None,):
            counts[label] = counts.get(label, 0) + 1
    return torch.tensor([max(1.0 / counts[label] for label in labels or (None,)) for labels in groups], dtype=torch.float64)


def expected_draws(targets: Sequence[Target], task: TaskSpec, weights: Tensor, num_classes: int) -> list[float]:
    """Expected images of each class (multilabel: with each label) in one epoch of ``len(targets)`` weighted draws.

    Binary: ``[negatives, positives]``.
    """
    task = _task(task)
    share = weights / weights.sum() * len(targets)
    draws = [0.0] * task.count_width(num_classes)
    for target, s in zip(targets, share.tolist(), strict=False):
        for label in task.label_groups(target):
            draws[label] += s
    return draws


def describe_balance(names: Sequence[str], counts: Sequence[int], draws: Sequence[float]) -> str:
    """One line per class: its training images and the images a balanced epoch draws of it."""
    rows = [f"  {name}: {count} images, ~{draw:.1f} drawn per epoch" for name, count, draw in zip(names, counts, draws, strict=False)]
    return "Balanced sampler (data.sampler: balanced), per class:\n" + "\n".join(rows)


class BalancedSampler(WeightedRandomSampler):
    """``WeightedRandomSampler`` with replacement whose draws depend only on ``seed`` and the epoch.

    Every process of a DDP run draws the same indices, and Lightning's ``DistributedSamplerWrapper``
    gives each one its share. Lightning calls ``set_epoch`` before each epoch; without it (under DDP the
    wrapper does not pass it on), each pass over the sampler moves to the next epoch's draws.
    ``state_dict``/``load_state_dict`` keep the seed and the epoch count across a resume.

    Args:
        weights: per-sample weights (:func:`balanced_weights`).
        num_samples: draws per epoch; None: as many as there are weights.
        seed: base seed of the draws; None: the run's seed (``seed_everything``, which sets ``PL_GLOBAL_SEED``),
            or 0 without one, so that all processes agree.

    Example::

        sampler = BalancedSampler(balanced_weights(targets, "multiclass"), seed=0)
        DataLoader(train_set, batch_size=32, sampler=sampler)
    """

    def __init__(self, weights: Tensor | Sequence[float], num_samples: int | None = None, seed: int | None = None) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        # WeightedRandomSampler takes a tensor too
        super().__init__(weights, num_samples if num_samples is not None else len(weights), replacement=True)  # type: ignore[arg-type]
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of ``epoch`` next."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """The seed and the epoch whose draws come next."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the same seed, the next epoch's draws."""
        self.seed, self.epoch = int(state_dict["seed"]), int(state_dict["epoch"])

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed + self.epoch) % 2**63)
        self.epoch += 1  # a plain loop that never calls set_epoch still gets new draws each pass
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist())

"""MixUp and CutMix on training batches: torchvision's v2 transforms applied to dict batches.

torchvision's ``v2.MixUp`` and ``v2.CutMix`` mix a batch of images with the batch rolled by one, and
their labels by the same weight ``lam``. They take an image tensor and a label tensor; the batches
here are dicts (``image``, ``target``, ``index``, ``path``), so :class:`BatchMixer` hands them the
image and the target and puts the mixed ones back, keeping every other key. :class:`MixingCollate`
does this inside the train loader's workers, so that mixing costs no time on the training device.

What happens to the targets, per task:

- multiclass: class indices ``(N,)`` become class probabilities ``(N, C)`` that sum to 1.
- multilabel: multi-hot ``(N, C)`` floats become ``lam * y + (1 - lam) * y_rolled`` per label.
- binary: the ``(N, 1)`` 0/1 floats are mixed the same way, giving the probability that the mixed
  image is positive (``BCEWithLogitsLoss`` takes it as is).

A mixed batch carries ``mixed: True`` (:data:`lit_finetune.keys.MIXED`): the module then updates no metric
of hard labels with it. ``index`` and ``path`` stay those of the first image of each pair (the one
weighted by ``lam``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import default_collate
from torchvision.transforms import v2

from lit_finetune import keys
from lit_finetune.tasks.classification import task_type
from lit_finetune.tasks.targets import ClassificationTargets


class BatchMixer:
    """Mix a dict batch with MixUp, CutMix, or one of them at random (each with probability 1/2, as timm).

    Every batch is mixed; pairs are consecutive samples (the batch rolled by one), so the batch must be
    shuffled, as a training loader's is. An alpha of 0 turns that method off.

    Args:
        mixup_alpha: ``alpha`` of the Beta distribution of MixUp's ``lam``; 0: no MixUp.
        cutmix_alpha: ``alpha`` of CutMix's ``lam`` (then corrected to the pasted box's area); 0: no CutMix.
        num_classes: classes of a multiclass task (the width of its one-hot targets).
        task: ``"multiclass"``, ``"multilabel"`` or ``"binary"``, or the task class (see the module docstring for
            the targets; the task's ``mix_num_classes`` and ``mix_target`` shape them).

    Raises:
        ValueError: a negative alpha, both alphas 0, an unknown task, or fewer than 2 classes for multiclass.

    Example::

        mixer = BatchMixer(mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10)
        batch = mixer({"image": torch.randn(8, 3, 32, 32), "target": torch.arange(8), "index": torch.arange(8)})
        batch["target"].shape, batch["mixed"]  # (8, 10), True
    """

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        num_classes: int = 2,
        task: str | type[ClassificationTargets] = "multiclass",
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"`mixup_alpha` and `cutmix_alpha` must be >= 0, got {mixup_alpha} and {cutmix_alpha}.")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("BatchMixer needs `mixup_alpha` > 0 or `cutmix_alpha` > 0 (0 turns a method off).")
        self.task = task_type(task) if isinstance(task, str) else task
        # None for multilabel and binary: their float (N, C) targets are mixed as given.
        width = self.task.mix_num_classes(num_classes)
        methods: list[v2.Transform] = []
        if mixup_alpha > 0:
            methods.append(v2.MixUp(alpha=mixup_alpha, num_classes=width))
        if cutmix_alpha > 0:
            methods.append(v2.CutMix(alpha=cutmix_alpha, num_classes=width))
        self.mix = methods[0] if len(methods) == 1 else v2.RandomChoice(methods)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        image, target = self.mix(batch[keys.IMAGE], self.task.mix_target(batch[keys.TARGET]))
        return {**batch, keys.IMAGE: image, keys.TARGET: target, keys.MIXED: True}


class MixingCollate:
    """A collate function for the train loader: ``default_collate`` of the dict samples, then :class:`BatchMixer`.

    Args:
        mixer: the mixer applied to every collated batch.

    Example::

        DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=MixingCollate(BatchMixer(cutmix_alpha=1.0, num_classes=10)))
    """

    def __init__(self, mixer: BatchMixer) -> None:
        self.mixer = mixer

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.mixer(default_collate(list(samples)))

"""Cross-entropy with soft targets and label smoothing, for softmax and sigmoid outputs."""

from __future__ import annotations

from torch import Tensor, nn

from lit_finetune.losses._common import Aggregation, ClassWeights, Reduction, Task, _check_unit_interval, _reduce
from lit_finetune.losses._pixelwise import (
    _check_pixelwise_args,
    _pixelwise_global_sum,
    _pixelwise_sample_loss,
    _pixelwise_update,
    _PixelwiseLoss,
)


def soft_cross_entropy_loss(
    preds: Tensor,
    target: Tensor,
    task: Task,
    label_smoothing: float = 0.0,
    num_classes: int | None = None,
    from_logits: bool = True,
    ignore_index: int | None = None,
    class_weights: ClassWeights = None,
    aggregation: Aggregation = "global",
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Cross-entropy with soft targets and label smoothing; see :class:`SoftCrossEntropyLoss`.

    Example::

        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, 0.0]])
        >>> soft_cross_entropy_loss(logits, torch.tensor([0]), task="multiclass", label_smoothing=0.1)
        tensor(0.3729)
    """
    _check_unit_interval("label_smoothing", label_smoothing)
    weights = _check_pixelwise_args(task, num_classes, ignore_index, class_weights, aggregation, reduction)
    stats = _pixelwise_update(
        preds, target, task, num_classes, from_logits, ignore_index, weights, 0.0, None, label_smoothing, validate_args
    )
    return _reduce(stats, _pixelwise_sample_loss, aggregation, reduction, _pixelwise_global_sum)


class SoftCrossEntropyLoss(_PixelwiseLoss):
    """Cross-entropy that accepts class indices, one-hot or soft labels, with label smoothing.

    ``task="multiclass"``: softmax cross-entropy ``-sum_c t_c log p_c``; with class indices it equals
    ``torch.nn.functional.cross_entropy`` including ``weight``, ``ignore_index`` and
    ``label_smoothing``, and soft labels (mixup, distillation) work the same way. Label smoothing
    mixes the target with the uniform distribution: ``t' = (1 - e) t + e / C``.
    ``task="binary"``/``"multilabel"``: binary cross-entropy on each output, with ``t' = (1 - e) t + e / 2``.

    Args:
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        label_smoothing: ``e`` in [0, 1]; 0.1 is a common choice.
        num_classes: Number of classes; checked against ``preds.shape[1]`` when given.
        from_logits: ``preds`` are logits (default) rather than probabilities.
        ignore_index: Target value whose entries are left out of the sum and of the count.
        class_weights: One weight per class (not for ``task="binary"``); only the ratios matter.
        aggregation: ``"global"``: the mean over all valid elements of the batch (as torch does);
            ``"per_sample"``: the mean of per-sample means.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``: one loss per sample, shape ``(N,)``.
        validate_args: Check target values (costs a device sync).

    Raises:
        ValueError: If ``label_smoothing`` or another option is out of range or the shapes do not
            fit the task.

    Example::

        >>> import torch
        >>> loss = SoftCrossEntropyLoss(task="multiclass", label_smoothing=0.1)
        >>> soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
        >>> loss(torch.randn(2, 3), soft).shape
        torch.Size([])
    """

    def __init__(
        self,
        task: Task,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        from_logits: bool = True,
        ignore_index: int | None = None,
        class_weights: list[float] | None = None,
        aggregation: Aggregation = "global",
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__(task, num_classes, from_logits, ignore_index, class_weights, aggregation, reduction, validate_args)
        _check_unit_interval("label_smoothing", label_smoothing)
        self.label_smoothing = label_smoothing

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, {super().extra_repr()}"


class SmoothedBCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` with label smoothing: targets ``y`` become ``y (1 - e) + e / 2``.

    The default loss of the multilabel and binary classification tasks when ``label_smoothing`` is set
    (``BCEWithLogitsLoss`` itself has no smoothing). ``pos_weight``, ``weight`` and ``reduction`` are
    torch's; soft targets (mixup) are smoothed the same way.

    Args:
        label_smoothing: ``e`` in [0, 1): 0 is the plain BCE, 0.1 is common.
        weight: torch's per-element rescaling weight.
        pos_weight: torch's weight of the positive term, one per class.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1).

    Example::

        >>> import torch
        >>> loss = SmoothedBCEWithLogitsLoss(label_smoothing=0.2)
        >>> loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]))  # the target becomes 0.9
        tensor(0.3269)
    """

    def __init__(
        self, label_smoothing: float = 0.0, weight: Tensor | None = None, pos_weight: Tensor | None = None, reduction: str = "mean"
    ) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        super().__init__(weight=weight, reduction=reduction, pos_weight=pos_weight)
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        e = self.label_smoothing
        return super().forward(input, target * (1 - e) + e / 2 if e > 0 else target)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"

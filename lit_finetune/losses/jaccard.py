"""Soft Jaccard (IoU) loss: ``1 - |X∩Y| / |X∪Y|`` on probabilities."""

from __future__ import annotations

from torch import Tensor

from lit_finetune.losses._common import Aggregation, ClassWeights, EmptyTarget, Reduction, Task
from lit_finetune.losses._overlap import _overlap_loss, _OverlapLoss


def _jaccard_score(intersection: Tensor, pred_sum: Tensor, target_sum: Tensor, smooth: float, eps: float) -> Tensor:
    return (intersection + smooth) / (pred_sum + target_sum - intersection + smooth).clamp_min(eps)


def jaccard_loss(
    preds: Tensor,
    target: Tensor,
    task: Task,
    num_classes: int | None = None,
    from_logits: bool = True,
    ignore_index: int | None = None,
    include_background: bool = True,
    class_weights: ClassWeights = None,
    smooth: float = 0.0,
    eps: float = 1e-7,
    log_loss: bool = False,
    aggregation: Aggregation = "global",
    empty_target: EmptyTarget = "ignore",
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Soft Jaccard (IoU) loss; see :class:`JaccardLoss` for the arguments.

    Example::

        >>> import torch
        >>> preds = torch.tensor([[1.0, 1.0, 0.0, 0.0]])   # probabilities
        >>> target = torch.tensor([[1, 0, 0, 0]])
        >>> jaccard_loss(preds, target, task="binary", from_logits=False)  # 1 - 1 / 2
        tensor(0.5000)
    """
    return _overlap_loss(
        preds, target, _jaccard_score, task, num_classes, from_logits, ignore_index, include_background,
        class_weights, smooth, eps, log_loss, aggregation, empty_target, reduction, validate_args,
    )  # fmt: skip


class JaccardLoss(_OverlapLoss):
    """Soft Jaccard (IoU) loss, ``1 - (I + smooth) / (P + T - I + smooth)`` averaged over classes.

    Same statistics, arguments and shapes as :class:`DiceLoss`; for the same inputs and
    ``smooth=0``, ``J = D / (2 - D)``. The intersection form is exact for soft labels (the Jaccard
    metric loss of Wang and Blaschko, 2023).

    Args:
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_classes: Number of classes; checked against ``preds.shape[1]`` when given.
        from_logits: ``preds`` are logits (default) rather than probabilities.
        ignore_index: Target value whose entries are excluded from every sum.
        include_background: ``task="multiclass"`` only: ``False`` leaves class 0 out of the mean.
        class_weights: One weight per class for the mean over classes; only the ratios matter.
        smooth: Added to numerator and denominator.
        eps: Lower bound of the denominator (and of the score when ``log_loss=True``).
        log_loss: Return ``-log(score)`` instead of ``1 - score``.
        aggregation: ``"global"`` (over the batch) or ``"per_sample"``.
        empty_target: ``"ignore"``, ``"zero"`` or ``"smooth"``; see :class:`DiceLoss`.
        reduction: ``"mean"``, ``"sum"`` (with ``aggregation="per_sample"``) or ``"none"`` (``(N,)``).
        validate_args: Check target values (costs a device sync).

    Raises:
        ValueError: If an option is out of range or the shapes do not fit the task.

    Example::

        >>> import torch
        >>> loss = JaccardLoss(task="multilabel", num_classes=4)
        >>> loss(torch.randn(8, 4), torch.randint(0, 2, (8, 4))).shape
        torch.Size([])
    """

    def score(self, intersection: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return _jaccard_score(intersection, pred_sum, target_sum, self.smooth, self.eps)

"""Soft Dice loss: ``1 - 2|X∩Y| / (|X| + |Y|)`` on probabilities, for classification and segmentation."""

from __future__ import annotations

from torch import Tensor

from lit_finetune.losses._common import Aggregation, ClassWeights, EmptyTarget, Reduction, Task
from lit_finetune.losses._overlap import _overlap_loss, _OverlapLoss


def _dice_score(intersection: Tensor, pred_sum: Tensor, target_sum: Tensor, smooth: float, eps: float) -> Tensor:
    return (2 * intersection + smooth) / (pred_sum + target_sum + smooth).clamp_min(eps)


def dice_loss(
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
    """Soft Dice loss; see :class:`DiceLoss` for the arguments.

    Example::

        >>> import torch
        >>> preds = torch.tensor([[1.0, 1.0, 0.0, 0.0]])   # probabilities
        >>> target = torch.tensor([[1, 0, 0, 0]])
        >>> dice_loss(preds, target, task="binary", from_logits=False)  # 1 - 2*1 / (2 + 1)
        tensor(0.3333)
    """
    return _overlap_loss(
        preds, target, _dice_score, task, num_classes, from_logits, ignore_index, include_background,
        class_weights, smooth, eps, log_loss, aggregation, empty_target, reduction, validate_args,
    )  # fmt: skip


class DiceLoss(_OverlapLoss):
    """Soft Dice loss, ``1 - (2 I + smooth) / (P + T + smooth)`` averaged over classes.

    ``I`` is the soft intersection, ``P`` the sum of predicted probabilities and ``T`` the sum of
    the target labels of a class, taken over the whole batch (``aggregation="global"``) or over each
    sample (``"per_sample"``). The intersection is ``sum(min(p, t))``, which equals ``sum(p * t)`` for
    0/1 labels and stays exact for soft labels (a prediction equal to a soft label scores 1).
    Computation runs in float32 (float64 stays float64) with autocast disabled.

    Args:
        task: ``"binary"`` (one sigmoid output), ``"multiclass"`` (softmax over dimension 1) or
            ``"multilabel"`` (one sigmoid per class).
        num_classes: Number of classes; checked against ``preds.shape[1]`` when given. Give it when
            the loss is used through :class:`LossMetric` under DDP with ``aggregation="global"``.
        from_logits: ``preds`` are logits (default) rather than probabilities.
        ignore_index: Target value whose entries are excluded from every sum (for example 255).
        include_background: ``task="multiclass"`` only: ``False`` leaves class 0 out of the mean.
        class_weights: One weight per class for the mean over classes; only the ratios matter
            (they are divided by their sum).
        smooth: Added to numerator and denominator. ``0`` gives the plain Dice; ``1`` is a common
            choice with ``empty_target="smooth"``.
        eps: Lower bound of the denominator (and of the score when ``log_loss=True``).
        log_loss: Return ``-log(score)`` instead of ``1 - score``.
        aggregation: ``"global"``: one Dice over all samples of the batch (stable, handles images
            without foreground); ``"per_sample"``: the mean of per-sample Dice losses.
        empty_target: What a class with an empty target (no positive label among the valid entries)
            contributes: ``"ignore"`` leaves it out of the class mean; ``"zero"`` counts it with
            loss 0; ``"smooth"`` uses the formula, so with ``smooth > 0`` an empty prediction scores 1
            and predicted foreground is penalised as ``P / (P + smooth)``.
        reduction: ``"mean"``, ``"sum"`` (with ``aggregation="per_sample"``) or ``"none"``: one loss
            per sample, shape ``(N,)``, always computed per sample.
        validate_args: Check target values (costs a device sync); disable for speed once the
            pipeline is known to be right.

    Shapes:
        ``preds`` is ``(N,)``, ``(N, ...)`` or ``(N, 1, ...)`` for binary, ``(N, C)`` or
        ``(N, C, H, W[, D])`` otherwise. ``target`` has the shape of ``preds`` (binary, multilabel,
        and one-hot/soft multiclass labels) or holds integer class indices of shape
        ``(N[, H, W[, D]])`` (multiclass).

    Raises:
        ValueError: If an option is out of range or the shapes of ``preds`` and ``target`` do not fit
            the task.

    Example::

        >>> import torch
        >>> loss = DiceLoss(task="multiclass", num_classes=3, ignore_index=255)
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> mask = torch.randint(0, 3, (2, 8, 8))
        >>> mask[:, 0, 0] = 255
        >>> loss(logits, mask).backward()
    """

    def score(self, intersection: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return _dice_score(intersection, pred_sum, target_sum, self.smooth, self.eps)

"""Tversky loss: a Dice/Jaccard generalisation that weights false positives and false negatives."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from lit_finetune.losses._common import Aggregation, ClassWeights, EmptyTarget, Reduction, Task, _check_non_negative
from lit_finetune.losses._overlap import _overlap_loss, _OverlapLoss


def _check_tversky_args(alpha: float, beta: float) -> None:
    _check_non_negative("alpha", alpha)
    _check_non_negative("beta", beta)
    if alpha + beta <= 0:
        raise ValueError(f"`alpha + beta` must be > 0 (alpha=beta=0.5 is Dice), got alpha={alpha}, beta={beta}.")


def _tversky_score(
    intersection: Tensor, pred_sum: Tensor, target_sum: Tensor, smooth: float, eps: float, alpha: float, beta: float
) -> Tensor:
    false_pos = pred_sum - intersection
    false_neg = target_sum - intersection
    denominator = intersection + alpha * false_pos + beta * false_neg + smooth
    return (intersection + smooth) / denominator.clamp_min(eps)


def tversky_loss(
    preds: Tensor,
    target: Tensor,
    task: Task,
    alpha: float = 0.5,
    beta: float = 0.5,
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
    """Tversky loss; see :class:`TverskyLoss` for the arguments.

    Example::

        >>> import torch
        >>> preds = torch.tensor([[1.0, 1.0, 0.0, 0.0]])   # one false positive
        >>> target = torch.tensor([[1, 0, 0, 0]])
        >>> tversky_loss(preds, target, task="binary", alpha=0.3, beta=0.7, from_logits=False)
        tensor(0.2308)
    """
    _check_tversky_args(alpha, beta)
    score_fn = partial(_tversky_score, alpha=alpha, beta=beta)
    return _overlap_loss(
        preds, target, score_fn, task, num_classes, from_logits, ignore_index, include_background,
        class_weights, smooth, eps, log_loss, aggregation, empty_target, reduction, validate_args,
    )  # fmt: skip


class TverskyLoss(_OverlapLoss):
    """Tversky loss, ``1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)`` averaged over classes.

    ``TP = I``, ``FP = P - I`` and ``FN = T - I`` are soft counts (see :class:`DiceLoss`).
    ``alpha = beta = 0.5`` gives Dice (with half the ``smooth``), ``alpha = beta = 1`` gives Jaccard;
    ``beta > alpha`` penalises missed foreground more, which helps recall on small structures.

    Args:
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        alpha: Weight of false positives, ``>= 0``.
        beta: Weight of false negatives, ``>= 0``; ``alpha + beta > 0``.
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
        ValueError: If ``alpha``/``beta`` or another option is out of range or the shapes do not fit.

    Example::

        >>> import torch
        >>> loss = TverskyLoss(task="binary", alpha=0.3, beta=0.7)
        >>> loss(torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16))).shape
        torch.Size([])
    """

    def __init__(
        self,
        task: Task,
        alpha: float = 0.5,
        beta: float = 0.5,
        num_classes: int | None = None,
        from_logits: bool = True,
        ignore_index: int | None = None,
        include_background: bool = True,
        class_weights: list[float] | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        aggregation: Aggregation = "global",
        empty_target: EmptyTarget = "ignore",
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__(
            task, num_classes, from_logits, ignore_index, include_background, class_weights, smooth, eps,
            log_loss, aggregation, empty_target, reduction, validate_args,
        )  # fmt: skip
        _check_tversky_args(alpha, beta)
        self.alpha = alpha
        self.beta = beta

    def score(self, intersection: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        return _tversky_score(intersection, pred_sum, target_sum, self.smooth, self.eps, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, {super().extra_repr()}"

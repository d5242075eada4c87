"""Statistics and per-sample losses shared by the overlap losses (Dice, Jaccard, Tversky).

The three losses differ only in the score they compute from the same per-class statistics:
the soft intersection ``I``, the sum of predicted probabilities ``P`` and the sum of target
labels ``T``. The intersection is ``I = sum(min(p, t)) = (P + T - sum|p - t|) / 2``: it equals
``sum(p * t)`` (value and gradient) for 0/1 labels and is exact for soft labels too (``p == t``
gives a perfect score, which ``sum(p * t)`` does not).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from lit_finetune.losses._common import (
    EMPTY_TARGETS,
    Aggregation,
    ClassWeights,
    EmptyTarget,
    Reduction,
    Statistics,
    StatisticsLoss,
    Task,
    _check_choice,
    _check_class_weights,
    _check_ignore_index,
    _check_non_negative,
    _check_num_classes,
    _check_positive,
    _check_reduction,
    _check_task,
    _format_inputs,
    _probabilities,
    _reduce,
    _resolve_class_weights,
    _safe_divide,
    full_precision,
)

#: ``score(intersection, pred_sum, target_sum, smooth, eps) -> score in [0, 1]``
ScoreFn = Callable[[Tensor, Tensor, Tensor, float, float], Tensor]

STATISTICS = ("intersection", "pred_sum", "target_sum", "valid")


def _check_overlap_args(
    task: str,
    num_classes: int | None,
    ignore_index: int | None,
    include_background: bool,
    class_weights: ClassWeights,
    smooth: float,
    eps: float,
    aggregation: str,
    empty_target: str,
    reduction: str,
) -> Tensor | None:
    """Validate the options of an overlap loss; return the normalised class weights."""
    _check_task(task)
    _check_num_classes(num_classes, task)
    _check_ignore_index(ignore_index)
    if not include_background and task != "multiclass":
        raise ValueError(
            f"`include_background=False` drops class 0 of a softmax and applies to task='multiclass' "
            f"only, got task={task!r}; leave the background label out of the target instead."
        )
    _check_non_negative("smooth", smooth)
    _check_positive("eps", eps)
    _check_choice("empty_target", empty_target, EMPTY_TARGETS)
    _check_reduction(reduction, aggregation, sum_allowed_globally=False)
    return _check_class_weights(class_weights, task, num_classes)


def _soft_intersection(probs: Tensor, target: Tensor) -> Tensor:
    """``min(p, t)`` element-wise, written as ``p * t`` plus a term that is zero (with a zero
    gradient) for 0/1 labels, so hard labels get exactly the product form's gradient, also at
    ``p == t`` where ``min`` has a kink."""
    soft = (target > 0) & (target < 1)
    correction = torch.minimum(probs * (1 - target), target * (1 - probs))
    return probs * target + torch.where(soft, correction, 0.0)


def _overlap_update(
    preds: Tensor,
    target: Tensor,
    task: str,
    num_classes: int | None,
    from_logits: bool,
    ignore_index: int | None,
    include_background: bool,
    validate_args: bool,
) -> Statistics:
    """Per-sample, per-class statistics ``(N, C)``: intersection, prediction sum, target sum and
    the number of valid (not ignored) entries."""
    with full_precision(preds, target):
        preds, target, valid, hard = _format_inputs(preds, target, task, num_classes, ignore_index, validate_args)
        probs = _probabilities(preds, task, from_logits)
        if ignore_index is not None:
            probs = probs * valid
        pred_sum = probs.sum(dim=-1)
        target_sum = target.sum(dim=-1)
        intersection = (probs * target if hard else _soft_intersection(probs, target)).sum(dim=-1)
        count = valid.sum(dim=-1).to(pred_sum.dtype).expand_as(pred_sum)
        stats = {"intersection": intersection, "pred_sum": pred_sum, "target_sum": target_sum, "valid": count}
        if task == "multiclass" and not include_background:
            stats = {name: value[:, 1:] for name, value in stats.items()}
    return stats


def _overlap_sample_loss(
    stats: Statistics,
    score_fn: ScoreFn,
    smooth: float,
    eps: float,
    log_loss: bool,
    class_weights: Tensor | None,
    empty_target: str,
) -> tuple[Tensor, Tensor]:
    """Per-sample loss ``(N,)``: the (weighted) mean over classes of ``1 - score`` or ``-log(score)``.

    Classes without any valid entry never count. Classes whose target is empty follow
    ``empty_target``: ``"ignore"`` leaves them out of the mean, ``"zero"`` counts them with loss 0,
    ``"smooth"`` scores them with the formula (use ``smooth > 0``, so that an empty prediction
    scores 1). A sample with no class left gets weight 0.
    """
    target_sum = stats["target_sum"]
    score = score_fn(stats["intersection"], stats["pred_sum"], target_sum, smooth, eps)
    loss = -score.clamp_min(eps).log() if log_loss else 1.0 - score
    counted = stats["valid"] > 0
    if empty_target == "ignore":
        counted = counted & (target_sum > 0)
    elif empty_target == "zero":
        loss = torch.where(target_sum > 0, loss, 0.0)
    weights = counted.to(loss.dtype)
    resolved = _resolve_class_weights(class_weights, loss.shape[1], loss)
    if resolved is not None:
        weights = weights * resolved
    total = weights.sum(dim=1)
    return _safe_divide((loss * weights).sum(dim=1), total), (total > 0).to(loss.dtype)


def _class_weights_for_stats(class_weights: Tensor | None, task: str, include_background: bool) -> Tensor | None:
    if class_weights is not None and task == "multiclass" and not include_background:
        return class_weights[1:]
    return class_weights


def _overlap_loss(
    preds: Tensor,
    target: Tensor,
    score_fn: ScoreFn,
    task: str,
    num_classes: int | None,
    from_logits: bool,
    ignore_index: int | None,
    include_background: bool,
    class_weights: ClassWeights,
    smooth: float,
    eps: float,
    log_loss: bool,
    aggregation: str,
    empty_target: str,
    reduction: str,
    validate_args: bool,
) -> Tensor:
    """Functional form shared by ``dice_loss``, ``jaccard_loss`` and ``tversky_loss``."""
    weights = _check_overlap_args(
        task, num_classes, ignore_index, include_background, class_weights, smooth, eps, aggregation, empty_target, reduction
    )
    weights = _class_weights_for_stats(weights, task, include_background)
    stats = _overlap_update(preds, target, task, num_classes, from_logits, ignore_index, include_background, validate_args)

    def sample_loss(s: Statistics) -> tuple[Tensor, Tensor]:
        return _overlap_sample_loss(s, score_fn, smooth, eps, log_loss, weights, empty_target)

    return _reduce(stats, sample_loss, aggregation, reduction)


class _OverlapLoss(StatisticsLoss):
    """nn.Module form shared by :class:`DiceLoss`, :class:`JaccardLoss` and :class:`TverskyLoss`."""

    sum_allowed_globally = False
    class_weights: Tensor | None  # a buffer

    def __init__(
        self,
        task: Task,
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
        super().__init__(aggregation=aggregation, reduction=reduction)
        weights = _check_overlap_args(
            task, num_classes, ignore_index, include_background, class_weights, smooth, eps, aggregation, empty_target, reduction
        )
        self.task = task
        self.num_classes = num_classes
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.include_background = include_background
        self.smooth = smooth
        self.eps = eps
        self.log_loss = log_loss
        self.empty_target = empty_target
        self.validate_args = validate_args
        self.register_buffer("class_weights", _class_weights_for_stats(weights, task, include_background), persistent=False)

    @abstractmethod
    def score(self, intersection: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        """The overlap score ``(N, C)`` in [0, 1] from the statistics."""

    def sample_statistics(self, preds: Tensor, target: Tensor) -> Statistics:
        return _overlap_update(
            preds, target, self.task, self.num_classes, self.from_logits, self.ignore_index,
            self.include_background, self.validate_args,
        )  # fmt: skip

    def sample_loss(self, stats: Statistics) -> tuple[Tensor, Tensor]:
        return _overlap_sample_loss(
            stats, lambda i, p, t, _s, _e: self.score(i, p, t), self.smooth, self.eps, self.log_loss,
            self.class_weights, self.empty_target,
        )  # fmt: skip

    def epoch_statistics_defaults(self) -> Statistics:
        if self.aggregation == "per_sample":
            return super().epoch_statistics_defaults()
        classes = 1 if self.task == "binary" else self.num_classes
        if classes is not None and self.task == "multiclass" and not self.include_background:
            classes -= 1
        shape = () if classes is None else (classes,)
        return {name: torch.zeros(shape) for name in STATISTICS}

    def extra_repr(self) -> str:
        return (
            f"task={self.task!r}, num_classes={self.num_classes}, from_logits={self.from_logits}, "
            f"ignore_index={self.ignore_index}, smooth={self.smooth}, log_loss={self.log_loss}, "
            f"empty_target={self.empty_target!r}, {super().extra_repr()}"
        )

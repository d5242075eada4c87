"""Statistics shared by the element-wise losses (focal loss and soft-target cross-entropy).

Both are means of one loss per element (a sample of a classifier, a pixel of a mask, or a
sample-label pair for sigmoid outputs). Their per-sample statistics are the weighted sum of
element losses and the sum of element weights, so ignored entries are left out of the numerator
and of the count, and the mean over a batch equals ``torch.nn.functional.cross_entropy`` with
``ignore_index`` and ``weight``.

The focal modulating factor ``(1 - p_t) ** gamma`` is computed as ``exp(gamma * log(1 - p_t))``
from log-sigmoid / log-softmax values, which keeps value and gradient finite at saturated logits
even for ``gamma < 1`` (where the power form has an infinite derivative at ``p_t = 1``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_finetune.losses._common import (
    Aggregation,
    ClassWeights,
    Reduction,
    Statistics,
    StatisticsLoss,
    Task,
    _binary_log_probabilities,
    _check_class_weights,
    _check_ignore_index,
    _check_num_classes,
    _check_reduction,
    _check_task,
    _format_inputs,
    _multiclass_log_probabilities,
    _resolve_class_weights,
    _safe_divide,
    full_precision,
)

STATISTICS = ("loss_sum", "weight_sum")


def _check_pixelwise_args(
    task: str,
    num_classes: int | None,
    ignore_index: int | None,
    class_weights: ClassWeights,
    aggregation: str,
    reduction: str,
) -> Tensor | None:
    _check_task(task)
    _check_num_classes(num_classes, task)
    _check_ignore_index(ignore_index)
    _check_reduction(reduction, aggregation, sum_allowed_globally=True)
    return _check_class_weights(class_weights, task, num_classes)


def _log_one_minus_exp(log_p: Tensor) -> Tensor:
    """``log(1 - p)`` from ``log p``; bounded so that ``p == 1`` in floating point gives a finite value."""
    return torch.log(-torch.expm1(log_p.clamp(max=-torch.finfo(log_p.dtype).eps)))


def _sigmoid_element_loss(
    preds: Tensor, target: Tensor, from_logits: bool, gamma: float, alpha: float | None, label_smoothing: float
) -> Tensor:
    """Element-wise (focal) binary cross-entropy ``(N, C, S)`` for sigmoid outputs."""
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / 2
    log_p, log_1mp = _binary_log_probabilities(preds, from_logits)
    loss = -(target * log_p + (1 - target) * log_1mp)
    if gamma > 0:
        # 1 - p_t = p (1 - t) + (1 - p) t, in log space; log(0) = -inf drops a term exactly.
        log_1m_pt = torch.logaddexp(torch.log1p(-target) + log_p, torch.log(target) + log_1mp)
        loss = loss * torch.exp(gamma * log_1m_pt)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def _softmax_element_loss(preds: Tensor, target: Tensor, valid: Tensor, from_logits: bool, gamma: float, label_smoothing: float) -> Tensor:
    """Per-class terms ``(N, C, S)`` of the (focal) softmax cross-entropy."""
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + valid * (label_smoothing / target.shape[1])
    log_p = _multiclass_log_probabilities(preds, from_logits)
    loss = -target * log_p
    if gamma > 0:
        loss = loss * torch.exp(gamma * _log_one_minus_exp(log_p))
    return loss


def _pixelwise_update(
    preds: Tensor,
    target: Tensor,
    task: str,
    num_classes: int | None,
    from_logits: bool,
    ignore_index: int | None,
    class_weights: Tensor | None,
    gamma: float,
    alpha: float | None,
    label_smoothing: float,
    validate_args: bool,
) -> Statistics:
    """Per-sample ``loss_sum`` and ``weight_sum``, each ``(N,)``.

    Without class weights every valid element weighs 1. With class weights, an element weighs
    ``w[c]`` (sigmoid outputs) or ``sum_c w[c] t[c]`` (softmax; ``w[target]`` for class indices),
    the normalisation of ``torch.nn.functional.cross_entropy(weight=...)``.
    """
    with full_precision(preds, target):
        preds, target, valid, _ = _format_inputs(preds, target, task, num_classes, ignore_index, validate_args)
        weights = _resolve_class_weights(class_weights, preds.shape[1], preds)
        if task == "multiclass":
            terms = _softmax_element_loss(preds, target, valid, from_logits, gamma, label_smoothing)
            if weights is None:
                return {"loss_sum": terms.sum(dim=(1, 2)), "weight_sum": valid.sum(dim=(1, 2)).to(terms.dtype)}
            weights = weights.view(1, -1, 1)
            return {"loss_sum": (terms * weights).sum(dim=(1, 2)), "weight_sum": (target * weights).sum(dim=(1, 2))}
        terms = _sigmoid_element_loss(preds, target, from_logits, gamma, alpha, label_smoothing)
        element_weights = valid.to(terms.dtype)
        if weights is not None:
            element_weights = element_weights * weights.view(1, -1, 1)
        if ignore_index is not None:
            terms = torch.where(valid, terms, 0.0)
        terms = terms * element_weights
        return {"loss_sum": terms.sum(dim=(1, 2)), "weight_sum": element_weights.sum(dim=(1, 2))}


def _pixelwise_sample_loss(stats: Statistics) -> tuple[Tensor, Tensor]:
    """Weighted mean of the element losses of each sample; weight 0 for a sample with none valid."""
    weight_sum = stats["weight_sum"]
    return _safe_divide(stats["loss_sum"], weight_sum), (weight_sum > 0).to(weight_sum.dtype)


def _pixelwise_global_sum(stats: Statistics) -> Tensor:
    return stats["loss_sum"].sum()


class _PixelwiseLoss(StatisticsLoss):
    """nn.Module form shared by :class:`FocalLoss` and :class:`SoftCrossEntropyLoss`."""

    # Overridden by the subclasses' __init__ arguments.
    gamma: float = 0.0
    alpha: float | None = None
    label_smoothing: float = 0.0
    class_weights: Tensor | None  # a buffer

    def __init__(
        self,
        task: Task,
        num_classes: int | None,
        from_logits: bool,
        ignore_index: int | None,
        class_weights: list[float] | None,
        aggregation: Aggregation,
        reduction: Reduction,
        validate_args: bool,
    ) -> None:
        super().__init__(aggregation=aggregation, reduction=reduction)
        weights = _check_pixelwise_args(task, num_classes, ignore_index, class_weights, aggregation, reduction)
        self.task = task
        self.num_classes = num_classes
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.register_buffer("class_weights", weights, persistent=False)

    def sample_statistics(self, preds: Tensor, target: Tensor) -> Statistics:
        return _pixelwise_update(
            preds, target, self.task, self.num_classes, self.from_logits, self.ignore_index, self.class_weights,
            self.gamma, self.alpha, self.label_smoothing, self.validate_args,
        )  # fmt: skip

    def sample_loss(self, stats: Statistics) -> tuple[Tensor, Tensor]:
        return _pixelwise_sample_loss(stats)

    def global_sum(self, stats: Statistics) -> Tensor:
        return _pixelwise_global_sum(stats)

    def epoch_statistics_defaults(self) -> Statistics:
        if self.aggregation == "per_sample":
            return super().epoch_statistics_defaults()
        return {name: torch.zeros(()) for name in STATISTICS}

    def extra_repr(self) -> str:
        return (
            f"task={self.task!r}, num_classes={self.num_classes}, from_logits={self.from_logits}, "
            f"ignore_index={self.ignore_index}, {super().extra_repr()}"
        )

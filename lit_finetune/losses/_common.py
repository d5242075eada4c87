"""Shared pieces of the loss library: argument checks, input formatting and reductions.

Every loss follows the same two-step pattern borrowed from torchmetrics:

1. an ``_update``-like function turns ``(preds, target)`` into *per-sample statistics*, a dict of
   tensors whose first dimension is the batch and which can be summed over samples
   (for example intersection and cardinality per class, or a sum of pixel losses and the number
   of pixels that count);
2. a ``sample_loss`` function turns statistics into one loss per sample.

The reductions here combine the two. ``aggregation="global"`` sums the statistics over the batch
before computing one loss (Dice over all pixels of the batch, cross-entropy averaged over all
pixels); ``aggregation="per_sample"`` computes one loss per sample and averages them. Because the
statistics of the global form and the ``(sum of losses, count)`` pair of the per-sample form are
additive, the same functions give the exact epoch value in :class:`~lit_finetune.losses.LossMetric`.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Task = Literal["binary", "multiclass", "multilabel"]
Reduction = Literal["mean", "sum", "none"]
Aggregation = Literal["global", "per_sample"]
EmptyTarget = Literal["ignore", "zero", "smooth"]

TASKS = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")
AGGREGATIONS = ("global", "per_sample")
EMPTY_TARGETS = ("ignore", "zero", "smooth")

Statistics = dict[str, Tensor]
SampleLossFn = Callable[[Statistics], tuple[Tensor, Tensor]]
ClassWeights = Tensor | Sequence[float] | None

# Smallest log-probability used when probabilities (not logits) are given: the value
# torch.nn.functional.binary_cross_entropy clamps its logarithms to.
_LOG_CLAMP = -100.0


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def _check_task(task: str) -> None:
    _check_choice("task", task, TASKS)


def _check_num_classes(num_classes: int | None, task: str) -> None:
    if num_classes is None:
        return
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise ValueError(f"`num_classes` must be an int or None, got {num_classes!r}.")
    if task == "binary" and num_classes != 1:
        raise ValueError(
            f"`num_classes` must be None or 1 for task='binary' (one logit per sample or pixel), "
            f"got {num_classes}. Use task='multiclass' for softmax over {num_classes} classes."
        )
    minimum = 2 if task == "multiclass" else 1
    if num_classes < minimum:
        raise ValueError(f"`num_classes` must be >= {minimum} for task={task!r}, got {num_classes}.")


def _check_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"`ignore_index` must be an int (for example 255 or -100) or None, got {ignore_index!r}.")


def _check_non_negative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def _check_unit_interval(name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")


def _check_reduction(reduction: str, aggregation: str, sum_allowed_globally: bool) -> None:
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    if reduction == "sum" and aggregation == "global" and not sum_allowed_globally:
        raise ValueError(
            "reduction='sum' has no meaning for an overlap loss computed over the whole batch "
            "(aggregation='global'); use reduction='mean', or aggregation='per_sample' to sum "
            "per-sample losses."
        )


def _check_class_weights(class_weights: ClassWeights, task: str, num_classes: int | None) -> Tensor | None:
    """Validate class weights and return them as a float tensor rescaled to mean 1.

    Dividing by the sum (and multiplying by the number of classes) makes only the ratios matter:
    ``[2, 2, 2]``, ``[1, 1, 1]`` and no weights give the same loss.
    """
    if class_weights is None:
        return None
    if task == "binary":
        raise ValueError(
            "`class_weights` needs several classes; for task='binary' weight the positives with "
            "`alpha` (FocalLoss) or use task='multiclass'."
        )
    weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(f"`class_weights` must be a 1-D sequence with one weight per class, got shape {tuple(weights.shape)}.")
    if num_classes is not None and weights.numel() != num_classes:
        raise ValueError(f"`class_weights` has {weights.numel()} entries but `num_classes` is {num_classes}.")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"`class_weights` must be finite, >= 0 and not all zero, got {weights.tolist()}.")
    return weights * (weights.numel() / weights.sum())


# --------------------------------------------------------------------------------------------
# Input formatting
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def full_precision(preds: Tensor, target: Tensor) -> Iterator[None]:
    """Check that the inputs are tensors and disable autocast on their device, so that
    everything inside runs in the dtype the loss chooses (float32 or float64)."""
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"`preds` and `target` must be tensors, got {type(preds).__name__} and {type(target).__name__}.")
    device_type = preds.device.type
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def _compute_dtype(preds: Tensor) -> torch.dtype:
    """float32 for half, bfloat16 and float32 inputs; float64 stays float64."""
    if preds.is_floating_point():
        return torch.promote_types(preds.dtype, torch.float32)
    return torch.float32


class _Inputs(NamedTuple):
    preds: Tensor
    """``(N, C, S)``, at least float32."""
    target: Tensor
    """``(N, C, S)`` one-hot or soft labels in the dtype of ``preds``, zero where ignored."""
    valid: Tensor
    """Boolean mask, ``(N, 1, S)`` (binary, multiclass) or ``(N, C, S)`` (multilabel)."""
    hard: bool
    """The labels are known to be 0/1 (integer or boolean targets, class indices)."""


def _format_inputs(
    preds: Tensor,
    target: Tensor,
    task: str,
    num_classes: int | None,
    ignore_index: int | None,
    validate_args: bool,
) -> _Inputs:
    """Check shapes and return ``preds``, ``target`` and the mask of valid entries as ``(N, C, S)``.

    ``ignore_index`` applies per pixel for binary and multiclass targets and per label for
    multilabel targets.
    """
    if preds.ndim == 0 or preds.shape[0] == 0:
        raise ValueError(f"`preds` must have a non-empty batch dimension first, got shape {tuple(preds.shape)}.")
    preds = preds.to(_compute_dtype(preds))
    if task == "binary":
        return _format_binary(preds, target, ignore_index, validate_args)
    if task == "multilabel":
        return _format_multilabel(preds, target, num_classes, ignore_index, validate_args)
    return _format_multiclass(preds, target, num_classes, ignore_index, validate_args)


def _valid_mask(target: Tensor, ignore_index: int | None) -> Tensor:
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def _check_unit_range(target: Tensor, valid: Tensor, task: str, ignore_index: int | None) -> None:
    bad = valid & ((target < 0) | (target > 1))
    if bad.any():
        value = target[bad].flatten()[0].item()
        hint = "" if ignore_index is not None else " Set `ignore_index` if this value marks pixels to ignore."
        raise ValueError(f"For task={task!r}, `target` values must lie in [0, 1], found {value}.{hint}")


def _format_binary(preds: Tensor, target: Tensor, ignore_index: int | None, validate_args: bool) -> _Inputs:
    squeezed = preds.ndim >= 2 and preds.shape[1] == 1 and target.shape == preds.shape[:1] + preds.shape[2:]
    if target.shape != preds.shape and not squeezed:
        raise ValueError(
            f"For task='binary', `target` must have the shape of `preds` {tuple(preds.shape)} (or that "
            f"shape without a channel dimension of size 1), got {tuple(target.shape)}."
        )
    n = preds.shape[0]
    target = target.reshape(n, 1, -1)
    valid = _valid_mask(target, ignore_index)
    if validate_args:
        _check_unit_range(target, valid, "binary", ignore_index)
    hard = not target.is_floating_point()
    target = torch.where(valid, target.to(preds.dtype), 0.0)
    return _Inputs(preds.reshape(n, 1, -1), target, valid, hard)


def _check_channels(preds: Tensor, num_classes: int | None, task: str) -> None:
    if preds.ndim < 2:
        raise ValueError(f"For task={task!r}, `preds` must have shape (N, C) or (N, C, H, W[, D]), got {tuple(preds.shape)}.")
    if num_classes is not None and preds.shape[1] != num_classes:
        raise ValueError(
            f"`preds` has {preds.shape[1]} channels in dimension 1 but `num_classes` is {num_classes}; "
            "the class dimension must come second."
        )


def _format_multilabel(preds: Tensor, target: Tensor, num_classes: int | None, ignore_index: int | None, validate_args: bool) -> _Inputs:
    _check_channels(preds, num_classes, "multilabel")
    if target.shape != preds.shape:
        raise ValueError(
            f"For task='multilabel', `target` must have the shape of `preds` {tuple(preds.shape)} "
            f"(one 0/1 or soft label per class), got {tuple(target.shape)}."
        )
    n, c = preds.shape[:2]
    target = target.reshape(n, c, -1)
    valid = _valid_mask(target, ignore_index)
    if validate_args:
        _check_unit_range(target, valid, "multilabel", ignore_index)
    hard = not target.is_floating_point()
    target = torch.where(valid, target.to(preds.dtype), 0.0)
    return _Inputs(preds.reshape(n, c, -1), target, valid, hard)


def _format_multiclass(preds: Tensor, target: Tensor, num_classes: int | None, ignore_index: int | None, validate_args: bool) -> _Inputs:
    _check_channels(preds, num_classes, "multiclass")
    n, c = preds.shape[:2]
    index_shape = preds.shape[:1] + preds.shape[2:]
    if target.shape == index_shape:
        one_hot, valid = _one_hot(target.reshape(n, -1), c, ignore_index, validate_args, preds.dtype)
        return _Inputs(preds.reshape(n, c, -1), one_hot, valid, True)
    if target.shape == preds.shape:
        if ignore_index is not None:
            raise ValueError(
                "`ignore_index` applies to class-index targets; with one-hot/soft targets of shape "
                f"{tuple(preds.shape)} pass class indices of shape {tuple(index_shape)} instead."
            )
        hard = not target.is_floating_point()
        target = target.reshape(n, c, -1).to(preds.dtype)
        valid = torch.ones((n, 1, target.shape[-1]), dtype=torch.bool, device=target.device)
        if validate_args:
            _check_unit_range(target, valid.expand_as(target), "multiclass", None)
        return _Inputs(preds.reshape(n, c, -1), target, valid, hard)
    raise ValueError(
        f"For task='multiclass', `target` must hold class indices of shape {tuple(index_shape)} or "
        f"one-hot/soft labels of shape {tuple(preds.shape)}, got {tuple(target.shape)}."
    )


def _one_hot(target: Tensor, num_classes: int, ignore_index: int | None, validate_args: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One-hot encode class indices ``(N, S)`` -> ``(N, C, S)``; ignored entries never reach ``one_hot``."""
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"Class-index targets must be an integer tensor, got {target.dtype}; pass one-hot/soft "
            "labels with the shape of `preds` for float targets."
        )
    valid = _valid_mask(target, ignore_index)
    safe = target.long() if ignore_index is None else torch.where(valid, target, 0).long()
    if validate_args and safe.numel():
        low, high = torch.aminmax(safe)
        if low < 0 or high >= num_classes:
            bad = safe[(safe < 0) | (safe >= num_classes)][0].item()
            hint = "" if ignore_index is not None else " Set `ignore_index` if this value marks pixels to ignore."
            raise ValueError(f"`target` holds class index {bad} but `preds` has {num_classes} classes (0..{num_classes - 1}).{hint}")
    valid = valid.unsqueeze(1)
    one_hot = torch.zeros((safe.shape[0], num_classes, safe.shape[1]), dtype=dtype, device=safe.device)
    one_hot.scatter_(1, safe.unsqueeze(1), valid.to(dtype))
    return one_hot, valid


def _probabilities(preds: Tensor, task: str, from_logits: bool) -> Tensor:
    if not from_logits:
        return preds
    return preds.softmax(dim=1) if task == "multiclass" else preds.sigmoid()


def _binary_log_probabilities(preds: Tensor, from_logits: bool) -> tuple[Tensor, Tensor]:
    """``log p`` and ``log(1 - p)`` for sigmoid outputs, without forming ``log(sigmoid(x))``."""
    if from_logits:
        return F.logsigmoid(preds), F.logsigmoid(-preds)
    return preds.log().clamp_min(_LOG_CLAMP), torch.log1p(-preds).clamp_min(_LOG_CLAMP)


def _multiclass_log_probabilities(preds: Tensor, from_logits: bool) -> Tensor:
    if from_logits:
        return preds.log_softmax(dim=1)
    return preds.log().clamp_min(_LOG_CLAMP)


def _resolve_class_weights(class_weights: Tensor | None, num_channels: int, like: Tensor) -> Tensor | None:
    if class_weights is None:
        return None
    if class_weights.numel() != num_channels:
        raise ValueError(f"`class_weights` has {class_weights.numel()} entries but `preds` has {num_channels} classes.")
    return class_weights.to(device=like.device, dtype=like.dtype)


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------
def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0 (no NaN in value or gradient)."""
    positive = denominator > 0
    return torch.where(positive, numerator, 0.0) / torch.where(positive, denominator, 1.0)


def _epoch_statistics(stats: Statistics, sample_loss: SampleLossFn, aggregation: str) -> Statistics:
    """Sum per-sample statistics into statistics that add up across batches (and processes)."""
    if aggregation == "global":
        return {name: value.sum(dim=0) for name, value in stats.items()}
    losses, weights = sample_loss(stats)
    return {"loss_sum": (losses * weights).sum(), "count": weights.sum()}


def _loss_from_epoch_statistics(epoch: Statistics, sample_loss: SampleLossFn, aggregation: str) -> Tensor:
    """The mean loss from statistics summed by :func:`_epoch_statistics` over any number of batches."""
    if aggregation == "global":
        losses, _ = sample_loss({name: value.unsqueeze(0) for name, value in epoch.items()})
        return losses[0]
    return _safe_divide(epoch["loss_sum"], epoch["count"])


def _reduce(
    stats: Statistics,
    sample_loss: SampleLossFn,
    aggregation: str,
    reduction: str,
    global_sum: Callable[[Statistics], Tensor] | None = None,
) -> Tensor:
    """Apply ``reduction`` to per-sample statistics; ``none`` gives one loss per sample, shape ``(N,)``."""
    if reduction == "none":
        losses, weights = sample_loss(stats)
        return losses * weights
    if reduction == "sum":
        if aggregation == "global":
            if global_sum is None:
                raise ValueError("reduction='sum' needs aggregation='per_sample' for this loss.")
            return global_sum(stats)
        losses, weights = sample_loss(stats)
        return (losses * weights).sum()
    return _loss_from_epoch_statistics(_epoch_statistics(stats, sample_loss, aggregation), sample_loss, aggregation)


# --------------------------------------------------------------------------------------------
# Base class of the nn.Module forms
# --------------------------------------------------------------------------------------------
class StatisticsLoss(nn.Module, ABC):
    """Base class of the losses that are computed from additive statistics.

    A subclass implements :meth:`sample_statistics` and :meth:`sample_loss`; this class supplies
    ``forward`` (with ``reduction`` and ``aggregation``) and the two methods that
    :class:`~lit_finetune.losses.LossMetric` uses to compute exact epoch values:
    :meth:`epoch_statistics` and :meth:`loss_from_epoch_statistics`.

    Args:
        aggregation: ``"global"`` computes the loss from statistics summed over the batch;
            ``"per_sample"`` averages one loss per sample.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one loss per sample, shape ``(N,)``).
    """

    #: Whether ``reduction="sum"`` is defined with ``aggregation="global"``.
    sum_allowed_globally: bool = True

    def __init__(self, aggregation: Aggregation = "global", reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction, aggregation, self.sum_allowed_globally)
        self.aggregation = aggregation
        self.reduction = reduction

    @abstractmethod
    def sample_statistics(self, preds: Tensor, target: Tensor) -> Statistics:
        """Per-sample additive statistics, each a tensor whose first dimension is the batch."""

    @abstractmethod
    def sample_loss(self, stats: Statistics) -> tuple[Tensor, Tensor]:
        """Loss of each sample ``(N,)`` and its weight ``(N,)`` (0 for a sample with nothing to score)."""

    def global_sum(self, stats: Statistics) -> Tensor:
        """The value of ``reduction="sum"`` with ``aggregation="global"``."""
        raise ValueError("reduction='sum' needs aggregation='per_sample' for this loss.")

    def epoch_statistics(self, stats: Statistics) -> Statistics:
        """Statistics of a batch that add up across batches and processes (a ``sum`` reduction)."""
        return _epoch_statistics(stats, self.sample_loss, self.aggregation)

    def loss_from_epoch_statistics(self, epoch: Statistics) -> Tensor:
        """The mean loss from statistics summed over batches by :meth:`epoch_statistics`."""
        return _loss_from_epoch_statistics(epoch, self.sample_loss, self.aggregation)

    def epoch_statistics_defaults(self) -> Statistics:
        """Zero tensors with the names and shapes of :meth:`epoch_statistics` (metric states)."""
        return {"loss_sum": torch.zeros(()), "count": torch.zeros(())}

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        """Compute the loss of ``preds`` against ``target`` with the configured ``reduction``."""
        stats = self.sample_statistics(preds, target)
        return _reduce(stats, self.sample_loss, self.aggregation, self.reduction, self.global_sum)

    def extra_repr(self) -> str:
        return f"aggregation={self.aggregation!r}, reduction={self.reduction!r}"

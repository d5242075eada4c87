"""Weighted sums of cross-entropy and Dice: BCE-Dice (sigmoid outputs) and CE-Dice (softmax)."""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import Tensor

from lit_finetune.losses._common import (
    Aggregation,
    ClassWeights,
    EmptyTarget,
    Reduction,
    Statistics,
    StatisticsLoss,
    _check_non_negative,
    _reduce,
)
from lit_finetune.losses.cross_entropy import SoftCrossEntropyLoss
from lit_finetune.losses.dice import DiceLoss


def _check_term_weights(ce_name: str, ce_weight: float, dice_weight: float) -> None:
    _check_non_negative(ce_name, ce_weight)
    _check_non_negative("dice_weight", dice_weight)
    if ce_weight + dice_weight <= 0:
        raise ValueError(f"`{ce_name}` and `dice_weight` must not both be 0, got {ce_weight} and {dice_weight}.")


class _CrossEntropyDiceLoss(StatisticsLoss):
    """``ce_weight * cross-entropy + dice_weight * Dice``, each term reduced on its own."""

    sum_allowed_globally = False

    def __init__(self, ce: SoftCrossEntropyLoss, dice: DiceLoss, ce_weight: float, dice_weight: float) -> None:
        super().__init__(aggregation=dice.aggregation, reduction=dice.reduction)
        self.ce = ce
        self.dice = dice
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        # The shared options, readable on the combined loss as on its terms.
        self.task = dice.task
        self.num_classes = dice.num_classes
        self.from_logits = dice.from_logits
        self.ignore_index = dice.ignore_index
        self.include_background = dice.include_background
        self.label_smoothing = ce.label_smoothing
        self.smooth = dice.smooth
        self.eps = dice.eps
        self.log_loss = dice.log_loss
        self.empty_target = dice.empty_target
        self.validate_args = dice.validate_args

    def _terms(self) -> tuple[tuple[str, StatisticsLoss, float], ...]:
        return (("ce_", self.ce, self.ce_weight), ("dice_", self.dice, self.dice_weight))

    @staticmethod
    def _split(stats: Statistics, prefix: str) -> Statistics:
        return {name[len(prefix) :]: value for name, value in stats.items() if name.startswith(prefix)}

    def sample_statistics(self, preds: Tensor, target: Tensor) -> Statistics:
        stats: Statistics = {}
        for prefix, loss, _ in self._terms():
            stats.update({prefix + name: value for name, value in loss.sample_statistics(preds, target).items()})
        return stats

    def sample_loss(self, stats: Statistics) -> tuple[Tensor, Tensor]:
        total: Tensor | float = 0.0
        counted: Tensor | float = 0.0
        for prefix, loss, weight in self._terms():
            losses, weights = loss.sample_loss(self._split(stats, prefix))
            total = total + weight * losses * weights
            counted = torch.maximum(torch.as_tensor(counted, dtype=weights.dtype), weights)
        return cast(Tensor, total), cast(Tensor, counted)  # the loss has terms: both are tensors now

    def epoch_statistics(self, stats: Statistics) -> Statistics:
        epoch: Statistics = {}
        for prefix, loss, _ in self._terms():
            epoch.update({prefix + name: value for name, value in loss.epoch_statistics(self._split(stats, prefix)).items()})
        return epoch

    def loss_from_epoch_statistics(self, epoch: Statistics) -> Tensor:
        return cast(
            Tensor, sum(weight * loss.loss_from_epoch_statistics(self._split(epoch, prefix)) for prefix, loss, weight in self._terms())
        )

    def epoch_statistics_defaults(self) -> Statistics:
        defaults: Statistics = {}
        for prefix, loss, _ in self._terms():
            defaults.update({prefix + name: value for name, value in loss.epoch_statistics_defaults().items()})
        return defaults

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        """Compute ``ce_weight * CE + dice_weight * Dice`` with the configured ``reduction``."""
        stats = self.sample_statistics(preds, target)
        return cast(
            Tensor,
            sum(
                weight * _reduce(self._split(stats, prefix), loss.sample_loss, self.aggregation, self.reduction, loss.global_sum)
                for prefix, loss, weight in self._terms()
            ),
        )


class BCEDiceLoss(_CrossEntropyDiceLoss):
    """``bce_weight * BCE + dice_weight * Dice`` for sigmoid outputs (binary or multilabel masks).

    The BCE term (:class:`SoftCrossEntropyLoss`) gives every pixel a gradient, including images
    without foreground; the Dice term (:class:`DiceLoss`) counters class imbalance. Each term is
    reduced on its own, so the result equals the weighted sum of the two losses called separately.

    Args:
        task: ``"binary"`` or ``"multilabel"``.
        bce_weight: Weight of the binary cross-entropy term, ``>= 0``.
        dice_weight: Weight of the Dice term, ``>= 0``.
        num_classes: Number of labels; checked against ``preds.shape[1]`` when given.
        from_logits: ``preds`` are logits (default) rather than probabilities.
        ignore_index: Target value whose entries are excluded from both terms.
        class_weights: Per-label weights for both terms (multilabel); only the ratios matter.
        label_smoothing: Label smoothing of the BCE term.
        smooth: Dice smoothing.
        eps: Lower bound of the Dice denominator.
        log_loss: Use ``-log(Dice)`` for the Dice term.
        aggregation: ``"global"`` or ``"per_sample"``, for both terms.
        empty_target: Dice policy for empty targets: ``"ignore"``, ``"zero"`` or ``"smooth"``.
        reduction: ``"mean"``, ``"sum"`` (with ``aggregation="per_sample"``) or ``"none"`` (``(N,)``).
        validate_args: Check target values (costs a device sync).

    Raises:
        ValueError: If ``task`` is not a sigmoid task or an option is out of range.

    Example::

        >>> import torch
        >>> loss = BCEDiceLoss(task="binary", bce_weight=0.5, dice_weight=0.5)
        >>> loss(torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16))).shape
        torch.Size([])
    """

    def __init__(
        self,
        task: Literal["binary", "multilabel"] = "binary",
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        num_classes: int | None = None,
        from_logits: bool = True,
        ignore_index: int | None = None,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        aggregation: Aggregation = "global",
        empty_target: EmptyTarget = "ignore",
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        if task not in ("binary", "multilabel"):
            raise ValueError(f"BCEDiceLoss needs task='binary' or 'multilabel', got {task!r}; use CEDiceLoss for softmax outputs.")
        _check_term_weights("bce_weight", bce_weight, dice_weight)
        ce = SoftCrossEntropyLoss(
            task, label_smoothing, num_classes, from_logits, ignore_index, class_weights, aggregation, reduction, validate_args
        )
        dice = DiceLoss(
            task, num_classes, from_logits, ignore_index, True, class_weights, smooth, eps, log_loss,
            aggregation, empty_target, reduction, validate_args,
        )  # fmt: skip
        super().__init__(ce, dice, bce_weight, dice_weight)

    @property
    def bce_weight(self) -> float:
        """Weight of the binary cross-entropy term."""
        return self.ce_weight


class CEDiceLoss(_CrossEntropyDiceLoss):
    """``ce_weight * CE + dice_weight * Dice`` for softmax outputs (multiclass masks or labels).

    Args:
        ce_weight: Weight of the cross-entropy term, ``>= 0``.
        dice_weight: Weight of the Dice term, ``>= 0``.
        num_classes: Number of classes; checked against ``preds.shape[1]`` when given.
        from_logits: ``preds`` are logits (default) rather than probabilities.
        ignore_index: Target value whose entries are excluded from both terms.
        include_background: ``False`` leaves class 0 out of the Dice term.
        class_weights: Per-class weights for both terms; only the ratios matter.
        label_smoothing: Label smoothing of the cross-entropy term.
        smooth: Dice smoothing.
        eps: Lower bound of the Dice denominator.
        log_loss: Use ``-log(Dice)`` for the Dice term.
        aggregation: ``"global"`` or ``"per_sample"``, for both terms.
        empty_target: Dice policy for empty targets: ``"ignore"``, ``"zero"`` or ``"smooth"``.
        reduction: ``"mean"``, ``"sum"`` (with ``aggregation="per_sample"``) or ``"none"`` (``(N,)``).
        validate_args: Check target values (costs a device sync).

    Raises:
        ValueError: If an option is out of range or the shapes do not fit.

    Example::

        >>> import torch
        >>> loss = CEDiceLoss(num_classes=3, ignore_index=255, include_background=False)
        >>> loss(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).shape
        torch.Size([])
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        num_classes: int | None = None,
        from_logits: bool = True,
        ignore_index: int | None = None,
        include_background: bool = True,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        aggregation: Aggregation = "global",
        empty_target: EmptyTarget = "ignore",
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        _check_term_weights("ce_weight", ce_weight, dice_weight)
        ce = SoftCrossEntropyLoss(
            "multiclass", label_smoothing, num_classes, from_logits, ignore_index, class_weights, aggregation,
            reduction, validate_args,
        )  # fmt: skip
        dice = DiceLoss(
            "multiclass", num_classes, from_logits, ignore_index, include_background, class_weights, smooth, eps,
            log_loss, aggregation, empty_target, reduction, validate_args,
        )  # fmt: skip
        super().__init__(ce, dice, ce_weight, dice_weight)


def bce_dice_loss(
    preds: Tensor,
    target: Tensor,
    task: Literal["binary", "multilabel"] = "binary",
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    num_classes: int | None = None,
    from_logits: bool = True,
    ignore_index: int | None = None,
    class_weights: ClassWeights = None,
    label_smoothing: float = 0.0,
    smooth: float = 0.0,
    eps: float = 1e-7,
    log_loss: bool = False,
    aggregation: Aggregation = "global",
    empty_target: EmptyTarget = "ignore",
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """BCE-Dice loss; see :class:`BCEDiceLoss` for the arguments.

    Example::

        >>> import torch
        >>> bce_dice_loss(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 1, 8, 8))).shape
        torch.Size([])
    """
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).tolist()
    loss = BCEDiceLoss(
        task, bce_weight, dice_weight, num_classes, from_logits, ignore_index, weights, label_smoothing, smooth,
        eps, log_loss, aggregation, empty_target, reduction, validate_args,
    )  # fmt: skip
    return loss.to(preds.device)(preds, target)


def ce_dice_loss(
    preds: Tensor,
    target: Tensor,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    num_classes: int | None = None,
    from_logits: bool = True,
    ignore_index: int | None = None,
    include_background: bool = True,
    class_weights: ClassWeights = None,
    label_smoothing: float = 0.0,
    smooth: float = 0.0,
    eps: float = 1e-7,
    log_loss: bool = False,
    aggregation: Aggregation = "global",
    empty_target: EmptyTarget = "ignore",
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """CE-Dice loss; see :class:`CEDiceLoss` for the arguments.

    Example::

        >>> import torch
        >>> ce_dice_loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).tolist()
    loss = CEDiceLoss(
        ce_weight, dice_weight, num_classes, from_logits, ignore_index, include_background, weights,
        label_smoothing, smooth, eps, log_loss, aggregation, empty_target, reduction, validate_args,
    )  # fmt: skip
    return loss.to(preds.device)(preds, target)

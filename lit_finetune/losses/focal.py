"""Focal loss (Lin et al., 2017) for sigmoid (binary, multilabel) and softmax (multiclass) outputs."""

from __future__ import annotations

import math

from torch import Tensor

from lit_finetune.losses._common import Aggregation, ClassWeights, Reduction, Task, _check_unit_interval, _reduce
from lit_finetune.losses._pixelwise import (
    _check_pixelwise_args,
    _pixelwise_global_sum,
    _pixelwise_sample_loss,
    _pixelwise_update,
    _PixelwiseLoss,
)


def _check_focal_args(task: str, gamma: float, alpha: float | None) -> None:
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"`gamma` must be a finite number >= 0 (0 gives cross-entropy, 2 is usual), got {gamma!r}.")
    _check_unit_interval("alpha", alpha, allow_none=True)
    if alpha is not None and task == "multiclass":
        raise ValueError(
            f"`alpha` weights positives against negatives of sigmoid outputs and applies to task='binary' "
            f"or 'multilabel', got alpha={alpha} with task='multiclass'; use `class_weights` instead."
        )


def focal_loss(
    preds: Tensor,
    target: Tensor,
    task: Task,
    gamma: float = 2.0,
    alpha: float | None = None,
    num_classes: int | None = None,
    from_logits: bool = True,
    ignore_index: int | None = None,
    class_weights: ClassWeights = None,
    aggregation: Aggregation = "global",
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> Tensor:
    """Focal loss; see :class:`FocalLoss` for the arguments.

    Example::

        >>> import torch
        >>> logits = torch.tensor([[2.0, -1.0]])
        >>> target = torch.tensor([[1.0, 0.0]])
        >>> focal_loss(logits, target, task="multilabel", gamma=0.0)  # plain BCE
        tensor(0.2201)
    """
    weights = _check_pixelwise_args(task, num_classes, ignore_index, class_weights, aggregation, reduction)
    _check_focal_args(task, gamma, alpha)
    stats = _pixelwise_update(preds, target, task, num_classes, from_logits, ignore_index, weights, gamma, alpha, 0.0, validate_args)
    return _reduce(stats, _pixelwise_sample_loss, aggregation, reduction, _pixelwise_global_sum)


class FocalLoss(_PixelwiseLoss):
    """Focal loss, ``-alpha_t (1 - p_t) ** gamma log(p_t)``, averaged over valid elements.

    For ``task="binary"``/``"multilabel"`` it is the sigmoid focal loss of
    ``torchvision.ops.sigmoid_focal_loss`` (same value), for ``task="multiclass"`` the softmax form
    ``-(1 - p_y) ** gamma log p_y`` (summed over classes for soft labels). ``gamma=0`` without
    ``alpha`` is cross-entropy. The loss is computed in log space (``logsigmoid``/``log_softmax``),
    so loss and gradients stay finite at logits of +-100 for any ``gamma >= 0``.

    Args:
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        gamma: Focusing parameter ``>= 0``; larger values down-weight easy examples.
        alpha: Sigmoid tasks only: weight in [0, 1] of positive targets (negatives get
            ``1 - alpha``); ``None`` weighs both alike. The paper uses 0.25 with ``gamma=2``.
        num_classes: Number of classes; checked against ``preds.shape[1]`` when given.
        from_logits: ``preds`` are logits (default) rather than probabilities.
        ignore_index: Target value whose entries are left out of the sum and of the count.
        class_weights: One weight per class (not for ``task="binary"``); only the ratios matter.
            Multiclass elements weigh ``w[target]`` as in ``torch.nn.functional.cross_entropy``.
        aggregation: ``"global"``: the mean over all valid elements of the batch;
            ``"per_sample"``: the mean of per-sample means.
        reduction: ``"mean"``, ``"sum"`` (of the weighted element losses) or ``"none"``: one loss per
            sample, shape ``(N,)``.
        validate_args: Check target values (costs a device sync).

    Raises:
        ValueError: If ``gamma`` or ``alpha`` is out of range, ``alpha`` is given for
            ``task="multiclass"``, or the shapes do not fit the task.

    Example::

        >>> import torch
        >>> loss = FocalLoss(task="multiclass", gamma=2.0, ignore_index=-100)
        >>> loss(torch.randn(4, 5), torch.tensor([0, 3, -100, 1])).shape
        torch.Size([])
    """

    def __init__(
        self,
        task: Task,
        gamma: float = 2.0,
        alpha: float | None = None,
        num_classes: int | None = None,
        from_logits: bool = True,
        ignore_index: int | None = None,
        class_weights: list[float] | None = None,
        aggregation: Aggregation = "global",
        reduction: Reduction = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__(task, num_classes, from_logits, ignore_index, class_weights, aggregation, reduction, validate_args)
        _check_focal_args(task, gamma, alpha)
        self.gamma = gamma
        self.alpha = alpha

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, {super().extra_repr()}"

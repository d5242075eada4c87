"""Segmentation metrics from one pixel confusion matrix accumulated over the epoch.

Every metric here holds the same state, a ``(C, C)`` count matrix (rows: true class, columns:
predicted class) summed over the epoch and over DDP ranks, so the epoch value is exact (not a mean
of batch means) and a ``MetricCollection`` with one compute group updates a single matrix for all
of them. Pixels whose target is ``ignore_index`` are not counted.

torchmetrics has ``MulticlassConfusionMatrix`` and ``MulticlassJaccardIndex``; these small classes
exist because (a) their ``ignore_index`` filtering indexes with a boolean mask, which waits for the
device on every update, while ``scatter_add_`` below does not, and (b) the mean IoU here averages
over the classes that occur (in the target or the prediction), the usual definition for
segmentation (PASCAL VOC, Cityscapes), whereas an absent class would count as 0 there.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Pixel confusion matrix ``(C, C)`` (int64) of predicted and true class maps of the same shape.

    Target pixels equal to ``ignore_index`` are left out; so are predictions and targets outside
    ``[0, num_classes)`` (they land in a spill bin that is dropped).

    Example::

        >>> confusion_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]), 2, ignore_index=255)
        tensor([[1, 0],
                [0, 1]])
    """
    if pred.shape != target.shape:
        raise ValueError(f"Predicted and true masks must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}.")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    spill = num_classes * num_classes
    index = torch.where(valid, target * num_classes + pred, torch.full_like(target, spill))
    counts = torch.zeros(spill + 1, dtype=torch.long, device=pred.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[:spill].reshape(num_classes, num_classes)


def class_iou(confusion: Tensor) -> Tensor:
    """IoU per class ``tp / (tp + fp + fn)``; NaN for a class absent from both target and prediction."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def class_dice(confusion: Tensor) -> Tensor:
    """Dice (F1) per class ``2 tp / (2 tp + fp + fn)``; NaN for a class absent from both target and prediction."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    total = confusion.sum(0) + confusion.sum(1)
    return torch.where(total > 0, 2 * tp / total.clamp_min(1), torch.full_like(tp, float("nan")))


def pixel_accuracy(confusion: Tensor) -> Tensor:
    """Share of counted pixels whose class is right (0 when no pixel was counted)."""
    confusion = confusion.double()
    return confusion.diagonal().sum() / confusion.sum().clamp_min(1)


def _nanmean(values: Tensor) -> Tensor:
    return torch.nan_to_num(values.nanmean(), nan=0.0)  # no class counted at all: 0


class PixelConfusionMatrix(Metric):
    """The pixel confusion matrix of an epoch, ``(C, C)`` counts (rows: true class, columns: predicted).

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value of unlabeled pixels, not counted; None counts every pixel.

    Example::

        metric = PixelConfusionMatrix(3, ignore_index=255)
        metric.update(pred_mask, true_mask)  # (N, H, W) class indices each
        metric.compute()  # (3, 3) counts
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    confmat: Tensor  # a metric state

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count the pixels of predicted class maps ``pred`` and true class maps ``target`` (same shape)."""
        self.confmat += confusion_counts(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> Tensor:
        return self.confmat

    def epoch_confusion(self) -> Tensor:
        """The matrix summed over all processes, leaving the local state as it was (a collective: call it on every rank)."""
        with self.sync_context(should_sync=True, should_unsync=True):  # a no-op in a single process
            return self.confmat.clone()


class MeanIoU(PixelConfusionMatrix):
    """Mean over classes of the IoU, from the epoch's pixel confusion matrix (classes absent from target and prediction are skipped)."""

    def compute(self) -> Tensor:
        return _nanmean(class_iou(self.confmat)).float()


class MeanDice(PixelConfusionMatrix):
    """Mean over classes of the Dice score, from the epoch's pixel confusion matrix (absent classes skipped)."""

    def compute(self) -> Tensor:
        return _nanmean(class_dice(self.confmat)).float()


class PixelAccuracy(PixelConfusionMatrix):
    """Share of the labeled pixels predicted right over the epoch."""

    def compute(self) -> Tensor:
        return pixel_accuracy(self.confmat).float()


class ForegroundIoU(PixelConfusionMatrix):
    """Binary segmentation: IoU of the foreground (class 1) over the epoch; 0 when neither target nor prediction has any."""

    def compute(self) -> Tensor:
        return torch.nan_to_num(class_iou(self.confmat)[1], nan=0.0).float()


class ForegroundDice(PixelConfusionMatrix):
    """Binary segmentation: Dice (F1) of the foreground (class 1) over the epoch; 0 when neither target nor prediction has any."""

    def compute(self) -> Tensor:
        return torch.nan_to_num(class_dice(self.confmat)[1], nan=0.0).float()

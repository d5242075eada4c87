"""Semantic segmentation: a class per pixel (softmax over ``C`` maps) or a yes/no per pixel (one sigmoid map).

Targets are integer masks ``(N, H, W)`` of class indices, with ``ignore_index`` (255 by default) on
unlabeled pixels; binary masks hold 0, 1 and ``ignore_index``. Logits are ``(N, C, H, W)`` at the
mask's resolution (binary: ``(N, 1, H, W)``). Pixels equal to ``ignore_index`` count in neither the
default loss nor the metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from lit_finetune.losses import BCEDiceLoss, CEDiceLoss
from lit_finetune.tasks.base import Prediction, Task, TaskText
from lit_finetune.tasks.segmentation_metrics import (
    ForegroundDice,
    ForegroundIoU,
    MeanDice,
    MeanIoU,
    PixelAccuracy,
    PixelConfusionMatrix,
    class_iou,
)

SegmentationMode = Literal["multiclass", "binary"]


class SegmentationText(TaskText):
    """Segmentation in words: classes by name (``ignore_index`` too), the classes a mask covers and their shares."""

    ignore_index: int | None
    binary: bool

    @property
    def num_labels(self) -> int:
        """Classes that can be labelled (see :attr:`SegmentationTask.num_labels`)."""
        raise NotImplementedError

    def class_label(self, index: int) -> str:
        if self.binary and self.class_names and len(self.class_names) == 1:
            return self.class_names[0] if index == 1 else f"not {self.class_names[0]}"
        return super().class_label(index)

    def confusion_names(self) -> list[str] | None:
        return [self.class_label(i) for i in range(self.num_labels)]

    def report_names(self) -> list[str]:
        return self.confusion_names() or []

    def class_shares(self, mask: Tensor) -> list[tuple[int, float]]:
        """``(class, share of the labeled pixels)`` of a mask, largest first."""
        mask = mask.reshape(-1).long()
        mask = mask[(mask >= 0) & (mask < self.num_labels)]
        if mask.numel() == 0:
            return []
        counts = torch.bincount(mask, minlength=self.num_labels).double()
        shares = counts / counts.sum()
        order = shares.argsort(descending=True).tolist()
        return [(c, float(shares[c])) for c in order if shares[c] > 0]

    def _shares_text(self, mask: Tensor) -> str:
        shares = self.class_shares(mask)
        return " ".join(f"{self.class_label(c)} {s:.0%}" for c, s in shares[:3]) or "- (all unlabeled)"

    def target_text(self, target: Tensor) -> str:
        return self._shares_text(target)

    def prediction_text(self, prediction: Prediction, i: int) -> str:
        return self._shares_text(prediction.pred[i])

    def prediction_columns(self) -> list[str]:
        return ["classes", "pixel_shares"]

    def prediction_row(self, prediction: Prediction, i: int) -> list[Any]:
        shares = self.class_shares(prediction.pred[i])
        return [" ".join(self.class_label(c) for c, _ in shares), " ".join(f"{s:.6f}" for _, s in shares)]


class SegmentationTask(SegmentationText, Task):
    """A class per pixel: ``"multiclass"`` (softmax over ``num_classes`` maps) or ``"binary"`` (one sigmoid map).

    Metrics, from one pixel confusion matrix of the epoch (exact under DDP): ``miou`` (mean IoU over the
    classes present in target or prediction), ``dice`` (mean Dice likewise), ``pixel_acc``; per class
    (validation and test) ``iou/<class>``. A binary task scores two classes, background and foreground.
    The default loss is ``CEDiceLoss`` (binary: ``BCEDiceLoss``), both with ``ignore_index``.

    Args:
        num_classes: number of classes (binary: 1 or 2; the model has one output map).
        class_names: names of the classes (binary with one name: the foreground).
        mode: ``"multiclass"`` or ``"binary"``.
        ignore_index: mask value of unlabeled pixels; None: every pixel is labeled. A class index is allowed
            (with a warning: that class is then neither trained nor scored), except 0 and 1 of binary targets.
        threshold: binary only: the probability above which a pixel is foreground.

    Raises:
        ValueError: a class count or threshold that does not fit the mode.

    Example::

        task = SegmentationTask(3, ["background", "cat", "dog"])
        task.predict(torch.randn(2, 3, 64, 64)).pred.shape  # (2, 64, 64)
    """

    name = "segmentation"
    dense = True

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        mode: SegmentationMode = "multiclass",
        ignore_index: int | None = 255,
        threshold: float = 0.5,
    ) -> None:
        if mode not in ("multiclass", "binary"):
            raise ValueError(f"Segmentation mode must be 'multiclass' or 'binary', got {mode!r}.")
        if mode == "binary" and num_classes not in (1, 2):
            raise ValueError(f"Binary segmentation needs num_classes 1 or 2 (one output map), got {num_classes}; use task='multiclass'.")
        if mode == "multiclass" and num_classes < 2:
            raise ValueError(f"num_classes={num_classes} is too small for multiclass segmentation (2 or more); use task='binary'.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}.")
        if mode == "binary" and ignore_index in (0, 1):
            raise ValueError(
                f"ignore_index={ignore_index} is a class of binary targets (0 background, 1 foreground); use another value, e.g. 255."
            )
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            # Allowed (ADE20K-style data ignores class 0), but that class is then never trained nor scored.
            warnings.warn(
                f"ignore_index={ignore_index} is a class index (num_classes={num_classes}): that class is neither trained nor scored.",
                stacklevel=2,
            )
        super().__init__(num_classes, class_names)
        self.mode = mode
        self.binary = mode == "binary"
        self.ignore_index = ignore_index
        self.threshold = threshold

    # ------------------------------------------------------------------ shapes and targets
    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else self.num_classes

    @property
    def num_labels(self) -> int:
        """Classes the metrics score: ``num_classes``, or 2 (background, foreground) for a binary task."""
        return 2 if self.binary else self.num_classes

    def prepare_target(self, target: Tensor) -> Tensor:
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 3 or target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(
                f"Segmentation needs integer masks of class indices (N, H, W) with {self.ignore_index} on unlabeled pixels; "
                f"got a {tuple(target.shape)} {target.dtype} target. Read masks as index PNGs (mode 'L' or 'P'), not RGB or floats."
            )
        return target.long()

    # ------------------------------------------------------------------ loss
    def default_loss(self, label_smoothing: float = 0.0, weight: Tensor | None = None) -> nn.Module:
        if self.binary:
            if weight is not None:
                raise ValueError(
                    "Binary segmentation's default BCEDiceLoss takes no class weights; configure a `loss` of your own instead."
                )
            return BCEDiceLoss(task="binary", ignore_index=self.ignore_index, label_smoothing=label_smoothing)
        weights = None if weight is None else [float(w) for w in weight]
        return CEDiceLoss(
            num_classes=self.num_classes, ignore_index=self.ignore_index, class_weights=weights, label_smoothing=label_smoothing
        )

    def class_weights(self, class_counts: Sequence[int], num_samples: int) -> Tensor:
        counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1)  # pixels per class
        return counts.sum() / (len(counts) * counts)

    # ------------------------------------------------------------------ predictions
    def _logit_threshold(self) -> float:
        return math.log(self.threshold / (1 - self.threshold))

    def predict(self, logits: Tensor) -> Prediction:
        """Per-pixel probabilities ``(N, C, H, W)`` (binary: ``(N, 1, H, W)``), class mask ``pred`` ``(N, H, W)`` and its probability."""
        if self.binary:
            probs = logits.float().sigmoid()
            p = probs[:, 0]
            pred = (p > self.threshold).long()
            return Prediction(probs, pred, torch.where(pred.bool(), p, 1 - p))
        probs = logits.float().softmax(dim=1)
        prob, pred = probs.max(dim=1)
        return Prediction(probs, pred, prob)

    def predicted_mask(self, logits: Tensor) -> Tensor:
        """The class mask ``(N, H, W)`` of ``logits``, without computing probabilities."""
        if self.binary:
            return (logits[:, 0].float() > self._logit_threshold()).long()
        return logits.max(dim=1).indices  # the same classes as argmax, which is several times slower over dim 1 on the CPU

    # ------------------------------------------------------------------ metrics
    def build_metrics(self) -> MetricCollection:
        n, ignore = self.num_labels, self.ignore_index
        metrics: dict[str, Metric | MetricCollection]
        metrics = {"miou": MeanIoU(n, ignore), "dice": MeanDice(n, ignore), "pixel_acc": PixelAccuracy(n, ignore)}
        if self.binary:  # what users of a binary task read: the foreground's scores (the means above include the background)
            metrics.update(iou_fg=ForegroundIoU(n, ignore), dice_fg=ForegroundDice(n, ignore))
        # One compute group: a single confusion matrix is updated for the three of them.
        return MetricCollection(metrics, compute_groups=[list(metrics)])

    def epoch_confusion(self, metrics: MetricCollection) -> Tensor:
        """The pixel confusion matrix ``(C, C)`` of the epoch that ``metrics`` (from :meth:`build_metrics`) hold, summed over
        the processes: the one matrix a validation step updates, shared by the scores, the per-class IoU and the reports."""
        holder = next(m for m in metrics.values(copy_state=False) if isinstance(m, PixelConfusionMatrix))  # the group's state
        return holder.epoch_confusion()

    def epoch_class_values(self, metrics: MetricCollection, per_class: MetricCollection | None) -> dict[str, Tensor]:
        """``iou/<class>`` of the epoch, from the metrics' confusion matrix; a class absent from target and prediction is left out."""
        iou = class_iou(self.epoch_confusion(metrics)).float()
        return {f"iou/{self.class_label(i)}": value for i, value in enumerate(iou) if not bool(value.isnan())}

    def metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return self.predicted_mask(logits), self.prepare_target(target)

    def torchmetrics_args(self) -> dict[str, Any]:
        return {"task": "multiclass", "num_classes": self.num_labels, "ignore_index": self.ignore_index}

    def report_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Labeled pixels only: per-pixel probabilities ``(P, C)`` (binary: ``(P,)``), targets, confidence, correct."""
        prediction = self.predict(logits)
        target = self.prepare_target(target).reshape(-1)
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        probs = prediction.probs.movedim(1, -1).reshape(len(target), -1)[keep]
        pred, prob = prediction.pred.reshape(-1)[keep], prediction.prob.reshape(-1)[keep]
        target = target[keep]
        return (probs[:, 0] if self.binary else probs), target, prob, pred == target

    # ------------------------------------------------------------------ names and captions


def build_segmentation_task(
    mode: SegmentationMode,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 255,
    threshold: float = 0.5,
) -> SegmentationTask:
    """The segmentation task for ``mode`` (``"multiclass"`` or ``"binary"``); see :class:`SegmentationTask`.

    Raises:
        ValueError: an unknown mode, or options that do not fit it.
    """
    return SegmentationTask(num_classes, class_names, mode, ignore_index, threshold)

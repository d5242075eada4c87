"""The task interface: what a module and the callbacks ask of a task, and what callbacks ask of a module.

A task object owns everything that differs between multiclass, multilabel and binary classification:
how targets are checked and shaped for the loss, the default loss, what a prediction is, the metrics,
the caption of a sample and which output Grad-CAM explains. Modules and callbacks call these methods;
they never branch on a task name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn
from torchmetrics import MetricCollection


@dataclass
class Prediction:
    """What a model predicts for a batch.

    Attributes:
        probs: per-class probabilities ``(N, C)`` (binary: ``(N, 1)``, the positive class).
        pred: the predicted class per sample ``(N,)`` (multilabel: the most probable label).
        prob: the probability of ``pred`` ``(N,)``.
        labels: multilabel only: the labels above the threshold, a bool ``(N, C)``; None otherwise.
    """

    probs: Tensor
    pred: Tensor
    prob: Tensor
    labels: Tensor | None = None


class Task(ABC):
    """One prediction task: targets, loss, predictions, metrics and captions.

    Args:
        num_classes: number of classes (binary: 1 or 2; the model has one output).
        class_names: names of the classes, for captions and reports.
    """

    name: str = ""
    dense: bool = False
    """True when targets and predictions are per pixel (segmentation): callbacks draw masks instead of labels."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}: they must match.")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Width of the logits the network must produce."""

    @abstractmethod
    def prepare_target(self, target: Tensor) -> Tensor:
        """The batch target as the loss takes it; raises ``ValueError`` when it does not fit the task."""

    @abstractmethod
    def default_loss(self, label_smoothing: float = 0.0, weight: Tensor | None = None) -> nn.Module:
        """The loss used when none is configured (``reduction="mean"``); ``weight``: per-class weights or ``pos_weight``."""

    @abstractmethod
    def class_weights(self, class_counts: Sequence[int], num_samples: int) -> Tensor:
        """Loss weights from the training label counts (``class_weights: auto`` / ``pos_weight: auto``)."""

    @abstractmethod
    def predict(self, logits: Tensor) -> Prediction:
        """Probabilities and predicted classes of ``logits``."""

    def logits_from_probs(self, probs: Tensor) -> Tensor:
        """Logits whose :meth:`predict` gives back ``probs`` (shaped as ``predict`` returns them), e.g. for
        probabilities averaged over test-time augmentations; probabilities are clamped away from 0 and 1."""
        raise NotImplementedError(f"{type(self).__name__} cannot turn probabilities back into logits: implement `logits_from_probs`.")

    @abstractmethod
    def build_metrics(self) -> MetricCollection:
        """Epoch metrics (torchmetrics objects) fed by :meth:`metric_inputs`."""

    def build_class_metrics(self) -> MetricCollection | None:
        """Per-class metrics of validation and test (a dict of values each), fed like :meth:`build_metrics`; None: none."""
        return None

    @abstractmethod
    def metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(preds, target)`` for the metrics of :meth:`build_metrics`."""

    @abstractmethod
    def target_text(self, target: Tensor) -> str:
        """Readable true label of one sample's target."""

    @abstractmethod
    def prediction_text(self, prediction: Prediction, i: int) -> str:
        """Readable prediction of sample ``i`` of ``prediction`` (classes and probabilities)."""

    def explained_logits(self, logits: Tensor) -> Tensor:
        """Logits with one column per class that Grad-CAM can explain (binary: ``[-z, z]``)."""
        return logits

    def explained_class(self, logits: Tensor) -> Tensor:
        """The column of :meth:`explained_logits` that Grad-CAM explains: the predicted class."""
        return self.predict(logits).pred

    def is_soft(self, target: Tensor) -> bool:
        """Whether ``target`` holds soft (mixed or smoothed) labels that metrics of hard labels must not score."""
        return False

    def class_label(self, index: int) -> str:
        """The name of class ``index`` if known, else the index itself."""
        if self.class_names and 0 <= index < len(self.class_names):
            return str(self.class_names[index])
        return str(index)

    @abstractmethod
    def torchmetrics_args(self) -> dict[str, Any]:
        """Arguments that select this task in torchmetrics' classification metrics (``task``, ``num_classes``/``num_labels``)."""

    @abstractmethod
    def report_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(probs, target, confidence, correct)`` for reports: metric inputs, then the probability of each
        decision and whether it was right (flat), for confidence histograms."""

    def report_names(self) -> list[str]:
        """Names of the report's per-class rows (one per output)."""
        return [self.class_label(i) for i in range(self.num_outputs)]

    def confusion_names(self) -> list[str] | None:
        """Row/column names of the confusion matrix; None when the task has none (multilabel)."""
        return [self.class_label(i) for i in range(self.num_classes)]

    @abstractmethod
    def prediction_columns(self) -> list[str]:
        """Header of the columns :meth:`prediction_row` writes in ``predictions.csv``."""

    @abstractmethod
    def prediction_row(self, prediction: Prediction, i: int) -> list[Any]:
        """Values of those columns for sample ``i``."""


@runtime_checkable
class TaskModule(Protocol):
    """What the diagnostics callbacks need from a LightningModule.

    ``FinetuneClassifier`` satisfies it; a subclass or a new module that provides these attributes works
    with ``BestWorstSamples``, ``GradCAM``, ``ClassificationReport`` and ``PredictionCSVWriter``.

    Attributes:
        task: the :class:`Task` object (predictions, captions, metrics).
        image_mean: the normalization mean of the input images (to show them).
        image_std: the normalization std.
        backbone: the feature extractor (``nn.Module``) whose layers Grad-CAM may explain.
        backbone_name: the torchvision name of the backbone (chooses Grad-CAM's layer for transformers).

    The module's ``forward(images)`` returns a dict with ``logits``; its step methods return a dict with
    ``loss``, ``logits``, ``target`` and ``index``, and ``sample_loss`` (per-sample losses ``(N,)``, detached)
    when a callback of the trainer has the attribute ``needs_sample_losses = True`` (as ``BestWorstSamples``
    has): the module looks once per run (in ``setup``) and otherwise skips that computation.
    """

    task: Task
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    backbone: nn.Module
    backbone_name: str


def task_of(pl_module: Any, user: str) -> Task:
    """The task of ``pl_module``, or a clear error naming what the module lacks."""
    task = getattr(pl_module, "task", None)
    if not isinstance(task, Task):
        raise TypeError(
            f"{user} needs a module with a `task` attribute holding a lit_finetune.tasks.Task "
            f"(see lit_finetune.tasks.TaskModule); {type(pl_module).__name__} has {type(task).__name__}."
        )
    return task

"""The task interface: what a module and the callbacks ask of a task, and what callbacks ask of a module
(:class:`TaskModuleProtocol`).

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

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MetricCollection

from lit_finetune import keys


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


class TaskText:
    """What a task says in words: class labels, captions of targets and predictions, the names of report rows and
    ``predictions.csv`` columns; the half of :class:`Task` that reports and callbacks read."""

    num_classes: int
    class_names: list[str] | None

    @property
    def num_outputs(self) -> int:
        """Width of the logits (see :attr:`Task.num_outputs`)."""
        raise NotImplementedError

    @abstractmethod
    def target_text(self, target: Tensor) -> str:
        """Readable true label of one sample's target."""

    @abstractmethod
    def prediction_text(self, prediction: Prediction, i: int) -> str:
        """Readable prediction of sample ``i`` of ``prediction`` (classes and probabilities)."""

    def class_label(self, index: int) -> str:
        """The name of class ``index`` if known, else the index itself."""
        if self.class_names and 0 <= index < len(self.class_names):
            return str(self.class_names[index])
        return str(index)

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


class Task(TaskText, ABC):
    """One prediction task: targets, loss, predictions, metrics and captions.

    Args:
        num_classes: number of classes (binary: 1 or 2; the model has one output).
        class_names: names of the classes, for captions and reports.
    """

    name: str = ""
    dense: bool = False
    """True when targets and predictions are per pixel (segmentation): callbacks draw masks instead of labels."""
    checkpoint_monitor: str | None = None
    """The logged metric whose best value the command line's checkpoint keeps (``mode: max``) when the config
    names none; None: the module's ``checkpoint_monitor``, else ``val/acc``."""
    eval_only_metrics: tuple[str, ...] = ()
    """Names of :meth:`build_metrics` left out of the training metrics: those that keep every prediction of the
    epoch (average precision), which validation and test can afford and a training epoch should not."""

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

    def epoch_class_values(self, metrics: MetricCollection, per_class: MetricCollection | None) -> dict[str, Tensor]:
        """The per-class values of an epoch, computed and synced across processes (names without the stage prefix):
        by default those of ``per_class`` (from :meth:`build_class_metrics`); a task may derive them from ``metrics``
        instead. A NaN value (a class absent from target and prediction) is left out."""
        if per_class is None or not any(metric.update_called for metric in per_class.values()):
            return {}
        values = {_strip_prefix(name, per_class.prefix): value for name, value in per_class.compute().items()}
        return {name: value for name, value in values.items() if not bool(torch.as_tensor(value).isnan().any())}

    @abstractmethod
    def metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(preds, target)`` for the metrics of :meth:`build_metrics`: probabilities or labels the task computed,
        never raw logits (torchmetrics applies a sigmoid or softmax only to values outside [0, 1], so logits that
        all fall inside [0, 1] would be read as probabilities)."""

    def explained_logits(self, logits: Tensor) -> Tensor:
        """Logits with one column per class that Grad-CAM can explain (binary: ``[-z, z]``)."""
        return logits

    def explained_class(self, logits: Tensor) -> Tensor:
        """The column of :meth:`explained_logits` that Grad-CAM explains: the predicted class."""
        return self.predict(logits).pred

    def is_soft(self, target: Tensor) -> bool:
        """Whether ``target`` holds soft (mixed or smoothed) labels; it may read the values (binary, multilabel), so it
        serves captions and host tensors. Steps decide with :func:`has_soft_targets`, which never reads values."""
        return self.is_soft_layout(target)

    def is_soft_layout(self, target: Tensor) -> bool:
        """Whether ``target``'s dtype and shape alone make it soft (multiclass: float ``(N, C)``); never reads values,
        so it costs no device synchronization."""
        return False

    @abstractmethod
    def torchmetrics_args(self) -> dict[str, Any]:
        """Arguments that select this task in torchmetrics' classification metrics (``task``, ``num_classes``/``num_labels``)."""

    @abstractmethod
    def report_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(probs, target, confidence, correct)`` for reports: metric inputs, then the probability of each
        decision and whether it was right (flat), for confidence histograms."""


def loss_weight(
    task: Task,
    value: str | Sequence[float] | None,
    class_counts: Sequence[int] | None,
    num_samples: int | None = None,
    counted: str = "training label",
) -> Tensor | None:
    """The weight of ``task``'s default loss for the option ``value``: None (unweighted), one weight per output,
    or ``"auto"``: :meth:`Task.class_weights` of ``class_counts``, logged once (rank zero). The one path of
    ``class_weights``/``pos_weight`` for every module.

    Args:
        task: the task.
        value: the option (``class_weights`` or ``pos_weight``).
        class_counts: the training counts ``"auto"`` needs (the command line fills them in from the data).
        num_samples: what the counts are out of; None: their sum (counts that partition the samples).
        counted: what the counts count, for the log line (``"training label"``, ``"pixel"``).

    Raises:
        ValueError: ``"auto"`` without counts, or a number of weights other than :attr:`Task.num_outputs`.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"Loss weights are a list of numbers or 'auto', got {value!r}.")
        if not class_counts:
            raise ValueError("'auto' loss weights need `class_counts` (filled in from the data by the command line; give them in Python).")
        weight = task.class_weights(class_counts, int(num_samples or sum(class_counts)))
        rank_zero_info(f"Loss weights from the {counted} counts {list(class_counts)}: {[round(float(w), 4) for w in weight]}")
        return weight
    weight = torch.as_tensor(value, dtype=torch.float32)
    if len(weight) != task.num_outputs:
        raise ValueError(f"{len(weight)} loss weights given for {task.num_outputs} outputs: give one per class.")
    return weight


@runtime_checkable
class TaskModuleProtocol(Protocol):
    """What the diagnostics callbacks need from a LightningModule (a ``typing.Protocol``: nothing to inherit; the
    shared base class of the shipped modules is :class:`~lit_finetune.modules.base.TaskLightningModule`).

    ``FinetuneClassifier`` and ``SegmentationModule`` satisfy it; a subclass or a new module that provides these attributes works
    with ``BestWorstSamples``, ``GradCAM``, ``ValidationReport`` and ``PredictionCSVWriter``.

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


TaskModule = TaskModuleProtocol
"""The former name of :class:`TaskModuleProtocol`."""


def task_of(pl_module: Any, user: str) -> Task:
    """The task of ``pl_module``, or a clear error naming what the module lacks."""
    task = getattr(pl_module, "task", None)
    if not isinstance(task, Task):
        raise TypeError(
            f"{user} needs a module with a `task` attribute holding a lit_finetune.tasks.Task "
            f"(see lit_finetune.tasks.TaskModuleProtocol); {type(pl_module).__name__} has {type(task).__name__}."
        )
    return task


def has_soft_targets(task: Task, batch: dict) -> bool:
    """Whether a batch's targets are soft, so that metrics of hard labels skip it: its ``mixed`` flag
    (:data:`lit_finetune.keys.MIXED`, set by MixUp/CutMix) or a soft layout (:meth:`Task.is_soft_layout`).

    Values are never read (no device synchronization per step): a data set of your own whose binary or
    multilabel targets are fractional sets ``mixed: True`` in its batches, or the metrics score them rounded.
    """
    return bool(batch.get(keys.MIXED, False)) or task.is_soft_layout(batch[keys.TARGET])


def _strip_prefix(name: str, prefix: str | None) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name

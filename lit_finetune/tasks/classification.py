"""Image classification tasks: one class per image, any number of labels per image, or one yes/no output."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchmetrics import AUROC, Accuracy, F1Score, Metric, MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelExactMatch
from torchmetrics.wrappers import ClasswiseWrapper

from lit_finetune.losses.cross_entropy import SmoothedBCEWithLogitsLoss
from lit_finetune.tasks.base import Prediction, Task
from lit_finetune.tasks.targets import BinaryTargets, ClassificationTargets, MulticlassTargets, MultilabelTargets

SOFT_CAPTION_CLASSES = 2
"""Classes named in the caption of a soft (mixed) target: the heaviest ones, with their weights."""


def weighted_text(task: Task, weights: Tensor, limit: int = SOFT_CAPTION_CLASSES) -> str:
    """``"cat 0.62+dog 0.38"``: the ``limit`` heaviest classes of one soft target and their weights (zeros left out)."""
    values, order = weights.reshape(-1).float().sort(descending=True, stable=True)
    parts = [f"{task.class_label(int(i))} {float(v):.2f}" for v, i in zip(values[:limit], order[:limit], strict=False) if v > 0]
    return "+".join(parts) or "-"


PROB_EPS = 1e-7
"""Probabilities are clamped to ``[PROB_EPS, 1 - PROB_EPS]`` when turned back into logits."""


def bce_loss(label_smoothing: float, pos_weight: Tensor | None) -> nn.Module:
    """The default loss of the sigmoid tasks: BCE with logits, its targets smoothed to ``y (1 - e) + e / 2`` when ``e > 0``."""
    if label_smoothing > 0:
        return SmoothedBCEWithLogitsLoss(label_smoothing, pos_weight=pos_weight)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def positive_weights(positives: Sequence[int], num_samples: int, names: Sequence[str]) -> Tensor:
    """``pos_weight: auto``: negatives / positives per label, from the training label counts.

    Raises:
        ValueError: a label with no positive or no negative training image (its weight would be infinite or 0),
            naming the labels.
    """
    counts = torch.as_tensor(list(positives), dtype=torch.float64)
    empty = [
        f"'{name}' ({int(n)} positives of {num_samples})" for name, n in zip(names, counts, strict=False) if n <= 0 or n >= num_samples
    ]
    if empty:
        raise ValueError(
            f"`pos_weight: auto` needs positive and negative training images of every label; these have only one kind: "
            f"{', '.join(empty)}. Give `pos_weight` values yourself, or fix the training split."
        )
    return ((num_samples - counts) / counts).float()


class SingleLabelTask(Task):
    """What the tasks with one decision per image (multiclass, binary) share: the predicted class and its
    probability as caption and ``predictions.csv`` row."""

    def prediction_text(self, prediction: Prediction, i: int) -> str:
        return f"{self.class_label(int(prediction.pred[i]))} {float(prediction.prob[i]):.2f}"

    def prediction_columns(self) -> list[str]:
        return ["pred_index", "pred_class", "probability"]

    def prediction_row(self, prediction: Prediction, i: int) -> list[Any]:
        pred = int(prediction.pred[i])
        return [pred, self.class_label(pred), f"{float(prediction.prob[i]):.6f}"]


class MulticlassTask(MulticlassTargets, SingleLabelTask):
    """One class per image: softmax over ``num_classes`` logits.

    Targets are class indices ``(N,)`` or, after mixup/cutmix or for distillation, class probabilities
    ``(N, C)`` (soft targets: the cross-entropy takes them; hard-label metrics skip such batches).
    Metrics: ``acc``, ``acc_top5`` (5 classes or more), ``f1`` (macro over the classes present in the
    targets or the predictions of the epoch), all from the softmax probabilities. Checkpoint monitor: ``val/acc``.

    Example::

        task = MulticlassTask(3, ["cat", "dog", "fox"])
        task.predict(torch.tensor([[0.1, 2.0, 0.3]])).pred  # tensor([1])
    """

    name = "multiclass"
    checkpoint_monitor = "val/acc"

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} is too small for task 'multiclass' (2 or more); use task='binary' for one output.")
        super().__init__(num_classes, class_names)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def prepare_target(self, target: Tensor) -> Tensor:
        if target.ndim == 1 and not target.is_floating_point():
            return target.long()
        if target.ndim == 2 and target.is_floating_point() and target.shape[1] == self.num_classes:
            return target  # soft targets
        raise ValueError(
            f"task 'multiclass' needs class indices (N,) or class probabilities (N, {self.num_classes}); got a "
            f"{tuple(target.shape)} {target.dtype} target. For several labels per image use task='multilabel'."
        )

    def default_loss(self, label_smoothing: float = 0.0, weight: Tensor | None = None) -> nn.Module:
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def class_weights(self, class_counts: Sequence[int], num_samples: int) -> Tensor:
        counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1)
        return counts.sum() / (len(counts) * counts)  # inverse frequency, mean 1 over samples

    def predict(self, logits: Tensor) -> Prediction:
        probs = logits.float().softmax(dim=1)
        prob, pred = probs.max(dim=1)
        return Prediction(probs, pred, prob)

    def logits_from_probs(self, probs: Tensor) -> Tensor:
        # log p: softmax(log p) = p for probabilities that sum to 1
        return probs.float().clamp_min(PROB_EPS).log()

    def build_metrics(self) -> MetricCollection:
        n = self.num_classes
        metrics: dict[str, Metric | MetricCollection]
        metrics = {"acc": Accuracy(task="multiclass", num_classes=n), "f1": F1Score(task="multiclass", num_classes=n, average="macro")}
        if n >= 5:
            metrics["acc_top5"] = Accuracy(task="multiclass", num_classes=n, top_k=5)
        return MetricCollection(metrics)

    def metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return logits.float().softmax(dim=1), target.long()

    def is_soft_layout(self, target: Tensor) -> bool:
        return target.is_floating_point() and target.ndim == 2

    def torchmetrics_args(self) -> dict[str, Any]:
        return {"task": "multiclass", "num_classes": self.num_classes}

    def report_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        prediction = self.predict(logits)
        target = target.long()
        return prediction.probs, target, prediction.prob, prediction.pred == target

    def target_text(self, target: Tensor) -> str:
        if self.is_soft(target.reshape(1, -1)) and target.numel() > 1:
            return weighted_text(self, target)  # mixed: the main classes and their weights
        return self.class_label(int(target.reshape(-1)[0]))


class BinaryTask(BinaryTargets, SingleLabelTask):
    """A yes/no question per image: one logit, sigmoid; class 1 is the positive class.

    Targets are 0/1 per image (``(N,)`` or ``(N, 1)``, any dtype). Metrics: ``acc``, ``auroc``, ``f1`` (of the
    positive class), from the sigmoid probabilities; ``acc`` and ``f1`` at ``threshold``. Checkpoint monitor:
    ``val/auroc``: it ranks the images without a threshold and does not reward predicting the majority class.
    ``num_classes`` is 1 or 2 (two class names: the negative and the positive class).

    Args:
        threshold: probability above which an image is predicted positive.
    """

    name = "binary"
    checkpoint_monitor = "val/auroc"

    def __init__(self, num_classes: int = 2, class_names: Sequence[str] | None = None, threshold: float = 0.5) -> None:
        if num_classes not in (1, 2):
            raise ValueError(
                f"task 'binary' needs num_classes 1 or 2 (one output), got {num_classes}. Use task='multiclass' for more classes."
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}.")
        super().__init__(num_classes, class_names)
        self.threshold = threshold

    @property
    def num_outputs(self) -> int:
        return 1

    def prepare_target(self, target: Tensor) -> Tensor:
        if target.numel() != len(target):
            raise ValueError(f"task 'binary' needs one 0/1 target per image; got shape {tuple(target.shape)}.")
        return target.float().reshape(-1, 1)

    def default_loss(self, label_smoothing: float = 0.0, weight: Tensor | None = None) -> nn.Module:
        return bce_loss(label_smoothing, weight)

    def class_weights(self, class_counts: Sequence[int], num_samples: int) -> Tensor:
        return positive_weights([int(class_counts[-1])], num_samples, [self.class_label(1)])

    def predict(self, logits: Tensor) -> Prediction:
        probs = logits.float().sigmoid().reshape(len(logits), 1)
        p = probs[:, 0]
        pred = (p > self.threshold).long()
        return Prediction(probs, pred, torch.where(pred.bool(), p, 1 - p))

    def logits_from_probs(self, probs: Tensor) -> Tensor:
        return torch.logit(probs.float().reshape(len(probs), 1), eps=PROB_EPS)

    def build_metrics(self) -> MetricCollection:
        t = self.threshold
        return MetricCollection(
            {"acc": Accuracy(task="binary", threshold=t), "auroc": AUROC(task="binary"), "f1": F1Score(task="binary", threshold=t)}
        )

    def metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return logits.float().sigmoid().reshape(-1), target.reshape(-1).round().long()

    def is_soft(self, target: Tensor) -> bool:
        return target.is_floating_point() and bool(((target != 0) & (target != 1)).any())

    def is_soft_layout(self, target: Tensor) -> bool:
        return False  # (N, 1) float 0/1 targets are hard: only values or the `mixed` key tell

    def target_text(self, target: Tensor) -> str:
        if self.is_soft(target):  # mixed: the probability that the image is positive
            return f"{self.class_label(1)} {float(target.reshape(-1)[0]):.2f}"
        return self.class_label(int(target.reshape(-1)[0].round()))

    def class_label(self, index: int) -> str:
        # With one class name, it names the positive class.
        if self.class_names and len(self.class_names) == 1:
            return self.class_names[0] if index == 1 else f"not {self.class_names[0]}"
        return super().class_label(index)

    def explained_logits(self, logits: Tensor) -> Tensor:
        return torch.cat([-logits, logits], dim=1)  # column 1: the positive class; column 0: the negative

    def torchmetrics_args(self) -> dict[str, Any]:
        return {"task": "binary", "threshold": self.threshold}

    def report_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        prediction = self.predict(logits)
        target = target.reshape(-1).long()
        return prediction.probs.reshape(-1), target, prediction.prob, prediction.pred == target

    def report_names(self) -> list[str]:
        return [self.class_label(1)]

    def confusion_names(self) -> list[str] | None:
        return [self.class_label(0), self.class_label(1)]


class MultilabelTask(MultilabelTargets, Task):
    """Any number of labels per image: a sigmoid per class; a label is predicted above its threshold.

    Targets are float multi-hot vectors ``(N, C)`` (all zeros: no label). Metrics: ``map`` (macro
    average precision, ``MultilabelAveragePrecision``, over the labels with a positive in the epoch;
    validation and test only, as it keeps every prediction of the epoch), ``f1_micro`` / ``f1_macro`` at
    the thresholds, ``exact_match`` (share of images whose whole label set is right), and per class
    (validation and test) ``ap/<class>`` and ``f1/<class>``. Checkpoint monitor: ``val/map``.

    Args:
        threshold: one probability for all classes, or one per class.

    Example::

        task = MultilabelTask(3, ["cat", "dog", "fox"], threshold=[0.5, 0.3, 0.5])
        task.predict(torch.tensor([[2.0, -0.5, -3.0]])).labels  # tensor([[True, True, False]])
    """

    name = "multilabel"
    checkpoint_monitor = "val/map"
    eval_only_metrics = ("map",)

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, threshold: float | Sequence[float] = 0.5) -> None:
        super().__init__(num_classes, class_names)
        values = [float(threshold)] * num_classes if isinstance(threshold, (int, float)) else [float(t) for t in threshold]
        if len(values) != num_classes or not all(0.0 < t < 1.0 for t in values):
            raise ValueError(f"`threshold` must be one value in (0, 1) or one per class ({num_classes}); got {threshold}.")
        self.thresholds = torch.tensor(values)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def prepare_target(self, target: Tensor) -> Tensor:
        if target.ndim == 2 and target.shape[1] == self.num_classes:
            return target.float()
        raise ValueError(
            f"task 'multilabel' needs multi-hot targets of shape (N, {self.num_classes}); got {tuple(target.shape)}. "
            "Class folders give one class per image: give the labels in a CSV (`data.labels_csv`)."
        )

    def default_loss(self, label_smoothing: float = 0.0, weight: Tensor | None = None) -> nn.Module:
        return bce_loss(label_smoothing, weight)

    def class_weights(self, class_counts: Sequence[int], num_samples: int) -> Tensor:
        return positive_weights(class_counts, num_samples, [self.class_label(i) for i in range(self.num_classes)])

    def _shifted_probs(self, logits: Tensor) -> Tensor:
        # sigmoid(z - logit(t)) > 0.5 exactly when sigmoid(z) > t, and a per-class shift keeps the
        # per-class ranking, so thresholded metrics and average precision share one input.
        t = self.thresholds.to(logits.device)
        return (logits.float() - torch.log(t / (1 - t))).sigmoid()

    def predict(self, logits: Tensor) -> Prediction:
        probs = logits.float().sigmoid()
        prob, pred = probs.max(dim=1)
        return Prediction(probs, pred, prob, labels=probs > self.thresholds.to(probs.device))

    def logits_from_probs(self, probs: Tensor) -> Tensor:
        return torch.logit(probs.float(), eps=PROB_EPS)

    def build_metrics(self) -> MetricCollection:
        n = self.num_classes
        return MetricCollection(
            {
                "map": MultilabelAveragePrecision(num_labels=n, average="macro"),
                "f1_micro": F1Score(task="multilabel", num_labels=n, average="micro"),
                "f1_macro": F1Score(task="multilabel", num_labels=n, average="macro"),
                "exact_match": MultilabelExactMatch(num_labels=n),
            },
            compute_groups=False,
        )

    def build_class_metrics(self) -> MetricCollection | None:
        n = self.num_classes
        names = [self.class_label(i) for i in range(n)]
        return MetricCollection(
            {
                "ap": ClasswiseWrapper(MultilabelAveragePrecision(num_labels=n, average=None), labels=names, prefix="ap/"),
                "f1": ClasswiseWrapper(F1Score(task="multilabel", num_labels=n, average=None), labels=names, prefix="f1/"),
            },
            compute_groups=False,
        )

    def metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return self._shifted_probs(logits), target.round().long()

    def is_soft(self, target: Tensor) -> bool:
        return target.is_floating_point() and bool(((target != 0) & (target != 1)).any())

    def torchmetrics_args(self) -> dict[str, Any]:
        return {"task": "multilabel", "num_labels": self.num_classes}

    def report_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        probs = self._shifted_probs(logits)  # a label is predicted above 0.5 here, at its own threshold in `probs`
        decided = probs > 0.5
        target = target.round().long()
        confidence = torch.where(decided, logits.float().sigmoid(), 1 - logits.float().sigmoid())
        return probs, target, confidence.flatten(), (decided == target.bool()).flatten()

    def confusion_names(self) -> list[str] | None:
        return None

    def target_text(self, target: Tensor) -> str:
        if self.is_soft(target):  # mixed: each label present, with its weight
            return weighted_text(self, target, limit=self.num_classes)
        positives = (target.reshape(-1) > 0.5).nonzero().flatten().tolist()
        return "+".join(self.class_label(i) for i in positives) or "-"

    def prediction_text(self, prediction: Prediction, i: int) -> str:
        assert prediction.labels is not None  # multilabel predictions carry their labels
        chosen = prediction.labels[i].nonzero().flatten().tolist()
        if not chosen:
            return f"- (top {self.class_label(int(prediction.pred[i]))} {float(prediction.prob[i]):.2f})"
        return "+".join(self.class_label(c) for c in chosen)

    def prediction_columns(self) -> list[str]:
        return ["labels", "probabilities", "top_class", "top_probability"]

    def prediction_row(self, prediction: Prediction, i: int) -> list[Any]:
        assert prediction.labels is not None  # multilabel predictions carry their labels
        chosen = prediction.labels[i].nonzero().flatten().tolist()
        return [
            " ".join(self.class_label(c) for c in chosen),
            " ".join(f"{float(prediction.probs[i, c]):.6f}" for c in chosen),
            self.class_label(int(prediction.pred[i])),
            f"{float(prediction.prob[i]):.6f}",
        ]


TASKS: dict[str, type[Task]] = {"multiclass": MulticlassTask, "multilabel": MultilabelTask, "binary": BinaryTask}


def build_task(name: str, num_classes: int, class_names: Sequence[str] | None = None, threshold: float | Sequence[float] = 0.5) -> Task:
    """The task object for ``name`` (``multiclass``, ``multilabel`` or ``binary``).

    Raises:
        ValueError: an unknown task name, or options that do not fit the task.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task '{name}'; choose one of {sorted(TASKS)}.")
    if name == "multiclass":
        if not (isinstance(threshold, (int, float)) and math.isclose(float(threshold), 0.5)):
            raise ValueError("`threshold` applies to tasks 'multilabel' and 'binary' only.")
        return MulticlassTask(num_classes, class_names)
    if name == "binary":
        if not isinstance(threshold, (int, float)):
            raise ValueError("task 'binary' takes one `threshold`.")
        return BinaryTask(num_classes, class_names, float(threshold))
    return MultilabelTask(num_classes, class_names, threshold)


def task_type(name: str) -> type[ClassificationTargets]:
    """The classification task class named ``name``: what the data modules ask about targets (its class methods).

    Raises:
        ValueError: an unknown task name.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task '{name}'; choose multiclass, multilabel or binary.")
    return cast(type[ClassificationTargets], TASKS[name])  # each of them is also a ClassificationTargets

"""The loss and metric bookkeeping of a task module's steps: updated every step, logged once an epoch.

A step updates metric objects only (:func:`update_losses`, the task's metrics); :func:`log_epoch_metrics` and
:func:`log_class_metrics` log them from the epoch-end hooks, where Lightning computes, syncs across processes
and resets them. Per-sample losses are computed only for callbacks that ask for them (:func:`sample_losses_wanted`).
"""

from __future__ import annotations

from typing import cast

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection

from lit_finetune import keys
from lit_finetune.losses import LossMetric, StatisticsLoss
from lit_finetune.tasks import Task


def sample_losses_wanted(trainer: Trainer | None) -> bool:
    """Whether the steps compute per-sample losses: a callback of ``trainer`` says ``needs_sample_losses = True``.

    Without a trainer (a step called by hand) they are always computed.
    """
    return trainer is None or any(getattr(callback, "needs_sample_losses", False) for callback in getattr(trainer, "callbacks", []))


def epoch_loss_metric(loss: nn.Module) -> Metric:
    """The metric of the configured loss's epoch value: exact for losses of ``lit_finetune.losses`` that aggregate over
    the batch (a Dice over all samples, from summed statistics), else the batch values' mean weighted by batch size."""
    return LossMetric(loss) if isinstance(loss, StatisticsLoss) else MeanMetric()


def update_losses(module: LightningModule, stage: str, terms: dict[str, Tensor], logits: Tensor, target: Tensor) -> Tensor:
    """Update the epoch metrics of a step's loss terms (logged at epoch end by :func:`log_epoch_metrics`); returns their sum.

    The configured loss (the ``loss`` term) goes to ``<stage>_loss``; with several terms, their sum and each other
    term also get a running mean in ``loss_term_metrics``.
    """
    total = terms[keys.LOSS] if len(terms) == 1 else torch.stack(list(terms.values())).sum()
    n, main = len(logits), getattr(module, f"{stage}_loss")
    if keys.LOSS in terms and not getattr(main, "updated_by_forward", False):
        if isinstance(main, LossMetric):
            main.update(logits, target)
        else:
            main.update(terms[keys.LOSS].detach(), weight=n)
    main.updated_by_forward = False
    if len(terms) > 1 or keys.LOSS not in terms:
        for name, value in {"sum": total, **terms}.items():
            if name != keys.LOSS:
                term_metric(module, f"{stage}_{name}").update(value.detach(), weight=n)
    return total


def log_epoch_metrics(module: LightningModule, stage: str) -> None:
    """Log the epoch values of ``stage``'s losses and metrics (metric objects: Lightning computes, syncs and resets them).

    One loss term: ``<stage>/loss`` (train: ``train/loss_epoch``) is the configured loss's exact epoch value.
    Several: ``<stage>/loss`` is their sum, ``<stage>/loss_main`` the configured loss and each other term
    ``<stage>/<name>``. Logged once an epoch rather than at every step: the step does no logging work for them.
    """
    tag, val = ("train/loss_epoch" if stage == "train" else f"{stage}/loss"), stage == "val"
    main = getattr(module, f"{stage}_loss")
    terms = {key: cast(Metric, m) for key, m in _term_metrics(module).items() if key.startswith(f"{stage}_") and m.update_called}
    for key, metric in terms.items():
        name = key[len(stage) + 1 :]
        module.log(
            tag if name == "sum" else f"{stage}/{name}", metric, prog_bar=val and name == "sum", metric_attribute=f"loss_term_metrics.{key}"
        )
    if main.update_called:
        module.log(f"{stage}/loss_main" if terms else tag, main, prog_bar=val and not terms)
    metrics = getattr(module, f"{stage}_metrics")
    if any(metric.update_called for metric in metrics.values()):  # not while every batch is mixed
        module.log_dict(metrics, prog_bar=val)


def term_metric(module: LightningModule, key: str) -> Metric:
    """The running mean of one loss term (created on first use: a subclass's terms are known once it returns them)."""
    metrics = _term_metrics(module)
    if key not in metrics:
        metrics[key] = MeanMetric().to(module.device)
    return cast(Metric, metrics[key])


def _term_metrics(module: LightningModule) -> nn.ModuleDict:
    return cast(nn.ModuleDict, module.loss_term_metrics)


def log_class_metrics(module: LightningModule, stage: str) -> None:
    """Log the per-class values of ``stage`` (dicts, which Lightning cannot log as metric objects: computed and synced by
    the task's :meth:`~lit_finetune.tasks.Task.epoch_class_values`, e.g. segmentation's from the epoch's one confusion matrix).

    A value that is NaN (a class absent from target and prediction has no IoU) is not logged.
    """
    metrics, per_class = getattr(module, f"{stage}_metrics"), getattr(module, f"{stage}_class_metrics")
    if not any(metric.update_called for metric in metrics.values(copy_state=False)):
        return
    values = cast(Task, module.task).epoch_class_values(metrics, per_class)
    module.log_dict({f"{stage}/{name}": value for name, value in values.items()})
    if per_class is not None:
        per_class.reset()


def training_metrics(task: Task, metrics: MetricCollection) -> MetricCollection:
    """``metrics`` without those the task keeps out of training (multilabel average precision keeps every prediction of the epoch)."""
    dropped = [name for name in task.eval_only_metrics if name in metrics]
    if not dropped:
        return metrics
    kept: dict[str, Metric | MetricCollection] = {name: m for name, m in metrics.items(keep_base=True) if name not in dropped}
    return MetricCollection(kept, compute_groups=False)

"""Hyperparameters and final metrics in TensorBoard's HPARAMS tab, to compare runs side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.tensorboard.summary import hparams as hparams_summary
from typing_extensions import override

from lit_finetune.callbacks._tensorboard import has_tensorboard, tensorboard_writer


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a/b`` keys; values TensorBoard cannot show (lists, None, objects) as text."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            flat[name] = value.item()
        else:
            flat[name] = str(value)
    return flat


class HParamsSummary(Callback):
    """Write the model's and data module's hyperparameters with the final metrics to TensorBoard's HPARAMS tab.

    At the end of ``fit`` (rank zero), the final value of each metric is written as a scalar
    ``zz-final/<metric>`` at the last step, along with the hyperparameter summary that the HPARAMS tab
    reads; with a ModelCheckpoint that monitors a metric, ``zz-final/best_<metric>`` too. The metrics'
    own curves are left untouched (Lightning's ``log_hyperparams`` would add a point at step 0).

    Args:
        metrics: names of the logged metrics to report (e.g. ``["val/acc", "val/loss"]``); None: every
            scalar metric the trainer holds at the end of fit (``trainer.callback_metrics``).

    Example::

        trainer = Trainer(callbacks=[HParamsSummary(metrics=["val/acc", "val/loss"])])
    """

    def __init__(self, metrics: Sequence[str] | None = None) -> None:
        super().__init__()
        if metrics is not None and (isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics)):
            raise ValueError(f"`metrics` must be a list of metric names, got {metrics!r}.")
        self.metrics = list(metrics) if metrics is not None else None
        self.logged: dict[str, float] = {}
        """The final metrics written (``zz-final/...`` names)."""
        self._enabled = True

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._enabled = has_tensorboard(trainer, type(self).__name__)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = tensorboard_writer(trainer) if self._enabled else None
        if writer is None:
            return
        params = dict(pl_module.hparams)
        datamodule = getattr(trainer, "datamodule", None)  # set by the data connector
        if datamodule is not None and getattr(datamodule, "hparams", None):
            params["data"] = dict(datamodule.hparams)
        metrics = self._final_metrics(trainer)
        step = trainer.global_step
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
        experiment, start, end = hparams_summary(flatten(params), metrics)
        file_writer = writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        writer.flush()
        self.logged = metrics

    def _final_metrics(self, trainer: Trainer) -> dict[str, float]:
        available = {k: v for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        names = self.metrics if self.metrics is not None else sorted(available)
        metrics = {f"zz-final/{name}": float(available[name]) for name in names if name in available}
        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        monitor = getattr(checkpoint, "monitor", None)
        if score is not None and monitor:
            metrics[f"zz-final/best_{monitor}"] = float(score)
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

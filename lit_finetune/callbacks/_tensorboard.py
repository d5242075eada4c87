"""Helpers shared by the diagnostics callbacks: finding the TensorBoard writer and logging scalars.

Scalars go to every logger of the trainer; images, figures, histograms and text need a
:class:`~lightning.pytorch.loggers.TensorBoardLogger`. A callback that needs one and finds none
warns once and skips its work (silently in ``predict``, which logs nothing).

Tags of the diagnostics start with ``zz-``: TensorBoard's Time Series view sorts its sections by the part of a
tag before the first ``/``, so ``train/`` and ``val/`` (the metrics) come first and the diagnostics after them.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.tensorboard import SummaryWriter


def find_tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
    """The first TensorBoardLogger of ``trainer``, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def has_tensorboard(trainer: Trainer, owner: str) -> bool:
    """Whether ``trainer`` logs to TensorBoard; warns (once per call site) naming ``owner`` when not."""
    if find_tensorboard(trainer) is not None:
        return True
    if trainer.predicting:  # predict logs nothing (the CLI runs it without a logger): no warning
        return False
    rank_zero_warn(f"{owner}: no TensorBoardLogger in `trainer.logger`, so it logs nothing. Add one to see its output.")
    return False


def tensorboard_writer(trainer: Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's TensorBoardLogger on rank zero; None elsewhere or without one."""
    logger = find_tensorboard(trainer)
    if logger is None or trainer.global_rank != 0:
        return None
    return logger.experiment


@rank_zero_only
def log_scalars(trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Write ``metrics`` to every logger of ``trainer`` at ``step`` (rank zero only)."""
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step)

"""Lightning's LR finder, run for the head LR of a fine-tuning module."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def suggest_lr(
    trainer: Any,
    model: Any,
    datamodule: Any = None,
    train_dataloaders: Any = None,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_training: int = 100,
    early_stop_threshold: float | None = 4.0,
    attr_name: str = "head_lr",
    plot_path: str | None = None,
) -> float | None:
    """Run Lightning's LR finder (``Tuner.lr_find``) and set ``model.<attr_name>`` to its suggestion.

    During the sweep every parameter group gets the same LR (Lightning's finder does so); the
    suggestion becomes the head LR and the backbone groups keep their multipliers and layer decay
    when the optimizer is built again for training.

    Args:
        trainer: The ``Trainer`` that will fit (its state is restored after the sweep).
        model: A ``FinetuneClassifier`` (anything with the attribute ``attr_name``).
        datamodule: The data (or give ``train_dataloaders``).
        train_dataloaders: Training data when there is no data module.
        min_lr: Smallest LR of the sweep.
        max_lr: Largest LR of the sweep.
        num_training: Number of sweep steps.
        early_stop_threshold: Stop the sweep when the loss exceeds this multiple of the best loss; None: never.
        attr_name: Attribute that receives the suggestion.
        plot_path: Where to save the loss-vs-LR plot (``.png``), if given.

    Returns:
        The suggested LR, or None when the finder found none.
    """
    from lightning.pytorch.tuner import Tuner

    finder = Tuner(trainer).lr_find(
        model,
        train_dataloaders=train_dataloaders,
        datamodule=datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        early_stop_threshold=early_stop_threshold,
        attr_name=attr_name,
    )
    if finder is None:
        return None
    if plot_path is not None:
        finder.plot(suggest=True).savefig(plot_path)  # type: ignore[union-attr]  # a Figure when no `ax` is given
    suggestion = finder.suggestion()
    log.info("LR finder suggests %s = %s", attr_name, suggestion)
    return suggestion

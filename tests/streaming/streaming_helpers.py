"""Helpers of the streaming tests: a tiny model and a callback that records which samples each step saw."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn

from lit_finetune import keys


class TinyModel(LightningModule):
    """A linear classifier of the mean colour: fast, and enough to move weights."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        self.val_indices: list[int] = []

    def training_step(self, batch, batch_idx):
        logits = self.head(batch[keys.IMAGE].mean(dim=(2, 3)))
        return nn.functional.cross_entropy(logits, batch[keys.TARGET])

    def validation_step(self, batch, batch_idx):
        self.val_indices += batch[keys.INDEX].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordSamples(Callback):
    """Records ``(epoch, index)`` of every trained sample; sends this process SIGTERM after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.seen: list[tuple[int, int]] = []
        self.stop_after = stop_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += [(trainer.current_epoch, int(i)) for i in batch[keys.INDEX]]
        if self.stop_after is not None and trainer.global_step == self.stop_after:
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster's preemption does

    def epoch(self, epoch: int) -> list[int]:
        return [index for e, index in self.seen if e == epoch]

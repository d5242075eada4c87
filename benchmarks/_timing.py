"""Timing helpers shared by the benchmark scripts (``python benchmarks/<script>.py`` puts this folder on the path)."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class EpochTimer(Callback):
    """Wall time of the training loop of each epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.times.append(time.perf_counter() - self.start)

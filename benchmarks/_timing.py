"""Helpers shared by the benchmark scripts (``python benchmarks/<script>.py`` puts this folder on the path):
the device sync and epoch timer of timed fits, and in-memory random images."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback
from torch.utils.data import Dataset

from lit_finetune import keys


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


class RandomImages(Dataset):
    """Normalized random images with labels, held in memory, as dict samples."""

    def __init__(self, n: int, size: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.targets = torch.randint(0, num_classes, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.images[i], keys.TARGET: self.targets[i], keys.INDEX: i, keys.PATH: str(i)}

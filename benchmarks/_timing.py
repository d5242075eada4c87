"""Helpers shared by the benchmark scripts (``python benchmarks/<script>.py`` puts this folder on the path):
the device sync and epoch timer of timed fits, in-memory random images and masks, the order of alternating
arms and the summary of rounds (median and spread)."""

from __future__ import annotations

import statistics
import time

import torch
from lightning.pytorch import Callback
from torch.utils.data import Dataset

from lit_finetune import keys

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def use_clock(name: str) -> None:
    """``"wall"``: elapsed time (the default); ``"cpu"``: this process's CPU time (all its threads), which other
    programs on a shared machine do not inflate. A GPU run wants ``"wall"``."""
    global _clock
    _clock = CLOCKS[name]


def now() -> float:
    """The reading of the chosen clock, in seconds."""
    return _clock()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class EpochTimer(Callback):
    """Time of the training loop of each epoch (on the clock :func:`use_clock` chose)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.start = now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.times.append(now() - self.start)


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


class RandomMasks(Dataset):
    """Normalized random images with integer masks of ``num_classes`` classes, held in memory, as dict samples."""

    def __init__(self, n: int, size: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.randint(0, num_classes, (n, size, size), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.images[i], keys.TARGET: self.masks[i], keys.INDEX: i, keys.PATH: str(i)}


def arm_order(round_: int, arms: tuple[str, str]) -> tuple[str, str]:
    """The two arms in the order of ``round_``: as given in even rounds, swapped in odd ones (drift hits both alike)."""
    return arms if round_ % 2 == 0 else (arms[1], arms[0])


def spread(values: list[float]) -> str:
    """``median (min-max, spread %)`` of the values of the rounds: the spread is (max - min) / median."""
    median = statistics.median(values)
    return f"median {median:8.2f}  (min {min(values):.2f}, max {max(values):.2f}, spread {(max(values) - min(values)) / median:5.1%})"


def print_ratio(names: tuple[str, str], rates: dict[str, list[float]], unit: str) -> None:
    """Per arm the median rate and its spread over the rounds; each round's ratio; last, ``ratio: <median of the rounds' ratios>``.

    The ratio of each round compares the two arms measured back to back, so slow drift of the machine cancels.
    """
    first, second = names
    width = max(len(first), len(second))
    for name in names:
        print(f"{name:<{width}}: {unit} {spread(rates[name])}")
    ratios = [a / b for a, b in zip(rates[first], rates[second], strict=False)]
    print(f"ratio per round ({first} / {second}): " + ", ".join(f"{r:.3f}" for r in ratios) + f"  [{spread(ratios).strip()}]")
    print(f"ratio: {statistics.median(ratios):.3f}")

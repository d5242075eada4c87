"""In-memory two-class images as dict samples, for tests that need no files."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lit_finetune import keys


class TinyImages(Dataset):
    """Two-class 32 px images held in memory, as dict samples (``noise`` > 0 adds random augmentation)."""

    def __init__(self, n: int = 16, size: int = 32, noise: float = 0.0, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % 2
        self.images = torch.randn(n, 3, size, size, generator=generator) + self.targets.view(-1, 1, 1, 1).float()
        self.noise = noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i] + self.noise * torch.randn_like(self.images[i])
        return {keys.IMAGE: image, keys.TARGET: self.targets[i], keys.INDEX: i, keys.PATH: f"{i}.png"}

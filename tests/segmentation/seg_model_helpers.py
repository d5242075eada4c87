"""In-memory segmentation samples and tiny modules for the model-side tests (no files, no data module)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from lit_finetune import keys
from lit_finetune.modules.segmentation import SegmentationModule

IGNORE = 255


class ShapesDataset(Dataset):
    """``n`` images ``size`` px: class 1 where channel 0 is bright, class 2 where channel 1 is, else 0; a border of ignore pixels."""

    def __init__(self, n: int = 8, size: int = 32, num_classes: int = 3, seed: int = 0, binary: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        masks = torch.zeros(n, size, size, dtype=torch.long)
        masks[self.images[:, 0] > 0.5] = 1
        if not binary and num_classes > 2:
            masks[self.images[:, 1] > 0.8] = 2
        masks[:, :2] = IGNORE
        self.masks = masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.images[i], keys.TARGET: self.masks[i], keys.INDEX: i, keys.PATH: f"img_{i}.png"}


def loader(dataset: Dataset, batch_size: int = 4, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0)


def tiny_module(num_classes: int = 3, backbone: str = "resnet18", lr: float = 1e-2, **kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    kwargs.setdefault("decoder_channels", [16, 16, 8, 8])
    return SegmentationModule(num_classes, backbone, optimizer=lambda p: torch.optim.Adam(p, lr=lr), **kwargs)

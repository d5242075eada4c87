"""Helpers of the module-side recipe tests (EMA, TTA, test report, compile): tiny data and trainers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from lit_finetune import FinetuneClassifier, ImageFolderDataModule


def tiny_data(root: Path, batch_size: int = 4, **kwargs: Any) -> ImageFolderDataModule:
    """The 32 px two-class folder of the ``image_folder`` fixture, no workers, no random augmentation."""
    return ImageFolderDataModule(str(root), batch_size=batch_size, num_workers=0, image_size=32, train_augment=False, **kwargs)


def tiny_model(**kwargs: Any) -> FinetuneClassifier:
    """A resnet18 from scratch with a fast SGD, so that weights move visibly in a few steps."""
    options: dict[str, Any] = {"num_classes": 2, "backbone": "resnet18", "optimizer": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)}
    options.update(kwargs)
    return FinetuneClassifier(**options)


def tiny_trainer(root: Path, **kwargs: Any) -> Trainer:
    """A CPU trainer without progress bar, model summary or sanity check."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
    }
    options.update(kwargs)
    return Trainer(**options)


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters of ``module``."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}

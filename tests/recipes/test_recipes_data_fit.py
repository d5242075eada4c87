"""Data recipes in a real fit: every option on at once, with the best/worst callback on mixed training batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_finetune import FinetuneClassifier
from lit_finetune.callbacks.best_worst import BestWorstSamples
from lit_finetune.data import ImageFolderDataModule


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_a_fit_with_every_data_recipe_on(image_folder: Path, tmp_path: Path, one_thread, task: str) -> None:
    torch.manual_seed(0)
    dm = ImageFolderDataModule(
        str(image_folder),
        batch_size=4,
        num_workers=0,
        backbone="resnet18",
        image_size=32,
        resize_size=32,
        task=task,
        augment="trivialaugment",
        random_erasing=0.25,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        sampler="balanced",
        train_fraction=0.5,
    )
    model = FinetuneClassifier(num_classes=dm.num_classes, backbone="resnet18", task=task, class_names=dm.class_names)
    best_worst = BestWorstSamples(k=2, stages=["train", "val"])
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[best_worst],
        logger=TensorBoardLogger(str(tmp_path), name="fit"),
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/acc" in trainer.callback_metrics  # validation batches are scored ...
    assert not model.train_metrics["acc"].update_called and "train/acc" not in trainer.callback_metrics  # ... mixed ones never
    assert len(best_worst.selected["train"]["worst"]) == 2 and len(best_worst.selected["val"]["worst"]) == 2
    held = best_worst._top["train"]["worst"].state["target"]  # mixed targets reach the callback as they were trained on
    assert held.shape == ((2, dm.num_classes) if task == "multiclass" else (2, 1)) and held.is_floating_point()

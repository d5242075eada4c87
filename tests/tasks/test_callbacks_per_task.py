"""The diagnostics callbacks and the prediction writer work for each task, through the task object."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from lit_finetune import (
    BestWorstSamples,
    ValidationReport,
    FinetuneClassifier,
    GradCAM,
    GradientStats,
    NanGuard,
    PredictionCSVWriter,
    keys,
)
from lit_finetune.tasks import TaskModuleProtocol

CLASSES = {"multiclass": ["a", "b", "c"], "binary": ["no", "yes"], "multilabel": ["a", "b", "c"]}


class TaskImages(Dataset):
    """Images whose colour channels say the labels: multi-hot, class index or 0/1 per task."""

    def __init__(self, task: str, n: int = 12, size: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        hot = (torch.rand(n, 3, generator=generator) > 0.5).float()
        if task == "multiclass":
            self.targets = torch.arange(n) % 3
            hot = torch.nn.functional.one_hot(self.targets, 3).float()
        elif task == "binary":
            self.targets = (torch.arange(n) % 2).float()
            hot = self.targets.view(-1, 1).expand(n, 3)
        else:
            self.targets = hot
        self.images = torch.randn(n, 3, size, size, generator=generator) * 0.3 + hot.view(n, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.images[i], keys.TARGET: self.targets[i], keys.INDEX: i, keys.PATH: f"{i}.png"}


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_callbacks_log_for_every_task(task: str, tmp_path: Path, one_thread) -> None:
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=len(CLASSES[task]), class_names=CLASSES[task], task=task, backbone="resnet18")
    assert isinstance(model, TaskModuleProtocol)
    data = TaskImages(task)
    callbacks = [
        BestWorstSamples(k=4, every_n_epochs=1),
        GradCAM(num_images=2, every_n_epochs=1),
        ValidationReport(num_thresholds=10),
        GradientStats(every_n_steps=1),
        NanGuard(),
        PredictionCSVWriter(str(tmp_path / "preds.csv")),
    ]
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="run"), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )
    loader = DataLoader(data, batch_size=4)
    trainer.fit(model, loader, loader)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    images, scalars = set(events.Tags()["images"]), set(events.Tags()["scalars"])
    assert {"best_worst/val/worst", "best_worst/val/best", "gradcam/val"} <= images, images
    assert any(t.startswith("report/auroc/") for t in scalars) and any(t.startswith("grad/") or "grad" in t for t in scalars)
    assert ("report/confusion_matrix" in images) == (task != "multilabel")
    expected = {"multiclass": {"val/acc", "val/f1"}, "binary": {"val/acc", "val/auroc", "val/f1"},
                "multilabel": {"val/map", "val/f1_micro", "val/f1_macro", "val/exact_match", "val/ap/a", "val/f1/c"}}[task]
    assert expected <= scalars, scalars

    trainer.predict(model, DataLoader(data, batch_size=4))
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert len(rows) == len(data)
    if task == "multilabel":
        probs = torch.sigmoid(model.eval()(data.images)[keys.LOGITS])
        for row, p in zip(rows, probs):
            chosen = [CLASSES[task][c] for c in range(3) if p[c] > 0.5]
            assert row["labels"].split() == chosen
    else:
        assert {r["pred_class"] for r in rows} <= set(CLASSES[task])

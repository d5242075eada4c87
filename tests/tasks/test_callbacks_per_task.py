"""The diagnostics callbacks and the prediction writer work for each task, through the task object.

Values are checked against an independent computation: the best/worst samples against losses computed here with
``torch.nn.functional`` from the final weights, the gradient statistics against ``p.grad`` recorded at each step.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from lit_finetune import (
    BestWorstSamples,
    FinetuneClassifier,
    GradCAM,
    GradientStats,
    NanGuard,
    PredictionCSVWriter,
    ValidationReport,
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


class GradRecorder(Callback):
    """``p.grad`` of every parameter of the head's linear layer and the norm of all gradients, at each optimizer step."""

    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach().double().flatten() for p in pl_module.parameters() if p.grad is not None]
        fc = pl_module.head.layers.fc
        head = torch.cat([fc.weight.grad.flatten(), fc.bias.grad.flatten()]).double()
        self.steps[trainer.global_step] = {"global_norm": torch.cat(grads).norm().item(), "head": head}


@torch.no_grad()
def sample_losses(model: FinetuneClassifier, data: TaskImages, task: str) -> torch.Tensor:
    """Each sample's loss with the default loss of its task (cross-entropy; BCE averaged over the labels)."""
    logits = model.eval()(data.images)[keys.LOGITS]
    if task == "multiclass":
        return F.cross_entropy(logits, data.targets, reduction="none")
    return F.binary_cross_entropy_with_logits(logits, data.targets.reshape(logits.shape).float(), reduction="none").mean(dim=1)


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
        GradRecorder(),
    ]
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="run"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    loader = DataLoader(data, batch_size=4)
    trainer.fit(model, loader, loader)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    images, scalars = set(events.Tags()["images"]), set(events.Tags()["scalars"])
    assert {"zz-best_worst/val/worst", "zz-best_worst/val/best", "zz-gradcam/val"} <= images, images
    assert ("zz-report/confusion_matrix" in images) == (task != "multilabel")
    # Best/worst: the k samples of lowest/highest loss, computed here with the weights validation ran with.
    losses = sample_losses(model, data, task)
    assert len(set(losses.round(decimals=4).tolist())) == len(data), "ties would make the check meaningless"
    for kind, descending in (("worst", True), ("best", False)):
        chosen = callbacks[0].selected["val"][kind]
        assert [i for i, _ in chosen] == losses.argsort(descending=descending)[:4].tolist(), kind
        torch.testing.assert_close(torch.tensor([score for _, score in chosen]), losses[[i for i, _ in chosen]], rtol=1e-4, atol=1e-6)
    # Gradient statistics: those of p.grad at each step (3 steps: 12 images, batches of 4).
    recorded = callbacks[-1].steps
    assert sorted(recorded) == [0, 1, 2]
    logged = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in scalars if tag.startswith("zz-grad/")}
    for step, record in recorded.items():
        assert logged["zz-grad/global_norm"][step] == pytest.approx(record["global_norm"], rel=1e-5)
        head = record["head"]
        for stat, value in (("min", head.min()), ("max", head.max()), ("mean", head.mean()), ("norm", head.norm())):
            assert logged[f"zz-grad/head.layers.fc/{stat}"][step] == pytest.approx(value.item(), rel=1e-4, abs=1e-7), (step, stat)
    auroc = [t for t in scalars if t.startswith("zz-report/auroc/")]
    assert len(auroc) == (1 if task == "binary" else 3), auroc
    expected = {
        "multiclass": {"val/acc", "val/f1"},
        "binary": {"val/acc", "val/auroc", "val/f1"},
        "multilabel": {"val/map", "val/f1_micro", "val/f1_macro", "val/exact_match", "val/ap/a", "val/f1/c"},
    }[task]
    assert expected <= scalars, scalars

    trainer.predict(model, DataLoader(data, batch_size=4))
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert len(rows) == len(data)
    if task == "multilabel":
        probs = torch.sigmoid(model.eval()(data.images)[keys.LOGITS])
        for row, p in zip(rows, probs, strict=False):
            chosen = [CLASSES[task][c] for c in range(3) if p[c] > 0.5]
            assert row["labels"].split() == chosen
    else:
        assert {r["pred_class"] for r in rows} <= set(CLASSES[task])

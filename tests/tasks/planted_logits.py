"""Planted logits for the metric tests: a classifier whose output is the logits each sample carries, batches of
awkward values (logits all inside [0, 1], classes absent from a batch or from the epoch), and the values
scikit-learn gives for every metric the module logs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_finetune import keys
from lit_finetune.modules.classifier import FinetuneClassifier

BATCH = 4
THRESHOLD = {"binary": 0.3, "multilabel": [0.5, 0.3, 0.7, 0.5], "multiclass": 0.5}
NUM_CLASSES = {"binary": 2, "multilabel": 4, "multiclass": 6}


class PlantedLogits(FinetuneClassifier):
    """A classifier whose forward returns the batch's ``image`` as the logits: the real steps, metrics and callbacks
    score logits chosen by the test."""

    def forward(self, images: Tensor, return_features: bool = False) -> dict[str, Tensor]:
        return {keys.LOGITS: images.float()}


class PlantedSet(Dataset):
    """Samples ``{image: logits, target, index}``."""

    def __init__(self, logits: Tensor, targets: Tensor) -> None:
        self.logits, self.targets = logits, targets

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.logits[i], keys.TARGET: self.targets[i], keys.INDEX: i}


def planted(task: str) -> tuple[Tensor, Tensor]:
    """Logits and targets of 16 samples (4 batches of 4) for ``task``; see each branch for what is awkward."""
    g = torch.Generator().manual_seed(3)
    if task == "binary":
        # Batch 1: logits inside [0, 1], every target positive; batch 2: only negatives, logits inside [-1, 0].
        logits = torch.tensor([0.3, 0.6, 0.9, 0.1, -0.9, -0.6, -0.3, -0.05])
        logits = torch.cat([logits, torch.randn(8, generator=g) * 2]).reshape(16, 1)
        targets = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.float32).reshape(16, 1)
        return logits, targets
    if task == "multiclass":
        # 6 classes; batch 1: logits inside [0, 1] and only classes 0 and 1; class 5 is never a target.
        logits = torch.cat([torch.rand(4, 6, generator=g), torch.randn(12, 6, generator=g) * 2])
        targets = torch.tensor([0, 1, 1, 0, 2, 3, 4, 0, 1, 2, 3, 4, 2, 2, 0, 3])
        return logits, targets
    # multilabel, 4 labels; batch 1: logits inside [0, 1] and label 3 absent; label 2 never positive in the epoch.
    logits = torch.cat([torch.rand(4, 4, generator=g), torch.randn(12, 4, generator=g) * 2])
    targets = (torch.rand(16, 4, generator=g) > 0.5).float()
    targets[:4, 3] = 0
    targets[:, 2] = 0
    targets[4, 3] = 1
    return logits, targets


def planted_module(task: str) -> PlantedLogits:
    torch.manual_seed(0)
    return PlantedLogits(num_classes=NUM_CLASSES[task], task=task, threshold=THRESHOLD[task], backbone="resnet18")


def loader(task: str, batch_size: int = BATCH) -> DataLoader:
    return DataLoader(PlantedSet(*planted(task)), batch_size=batch_size, shuffle=False)


def probabilities(task: str, logits: Tensor) -> np.ndarray:
    if task == "multiclass":
        return logits.double().softmax(1).numpy()
    return logits.double().sigmoid().numpy()


def reference_metrics(task: str, stage: str = "val") -> dict[str, float]:
    """Every metric the module logs for ``stage`` (``val`` or ``test``) over the planted samples, computed by scikit-learn."""
    # Imported here: the two DDP processes import this module and need no scikit-learn.
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score, top_k_accuracy_score

    logits, targets = planted(task)
    p, y = probabilities(task, logits), targets.numpy()
    if task == "binary":
        p, y = p[:, 0], y[:, 0].astype(int)
        pred = p > THRESHOLD["binary"]
        values = {"loss": log_loss(y, p), "acc": accuracy_score(y, pred), "auroc": roc_auc_score(y, p), "f1": f1_score(y, pred)}
    elif task == "multiclass":
        labels = list(range(NUM_CLASSES[task]))
        pred = p.argmax(1)
        values = {
            "loss": log_loss(y, p, labels=labels),
            "acc": accuracy_score(y, pred),
            "acc_top5": top_k_accuracy_score(y, p, k=5, labels=labels),
            "f1": f1_score(y, pred, average="macro"),  # over the classes in the targets or the predictions
        }
    else:
        decided = p > np.asarray(THRESHOLD["multilabel"])
        y = y.astype(int)
        values = {
            "loss": log_loss(y.reshape(-1), p.reshape(-1)),  # BCE's mean over every label of every image
            "map": average_precision_score(y, p, average="macro"),
            "f1_micro": f1_score(y, decided, average="micro", zero_division=0),
            "f1_macro": f1_score(y, decided, average="macro", zero_division=0),
            "exact_match": float((decided == y.astype(bool)).all(1).mean()),
        }
        ap = average_precision_score(y, p, average=None)  # a label without positives: 0, in the mean too
        f1 = f1_score(y, decided, average=None, zero_division=0)
        values.update({f"ap/{i}": ap[i] for i in range(4)} | {f"f1/{i}": f1[i] for i in range(4)})
    return {f"{stage}/{name}": float(value) for name, value in values.items()}

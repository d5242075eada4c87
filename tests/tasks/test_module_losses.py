"""What the module optimizes is exactly what the configured loss returns for the batch."""

from __future__ import annotations

import pytest
import torch

from lit_finetune import FinetuneClassifier, keys
from lit_finetune.losses import BCEDiceLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

OVERLAP = [DiceLoss, JaccardLoss, TverskyLoss]


def _model(task: str, loss: torch.nn.Module, num_classes: int) -> FinetuneClassifier:
    torch.manual_seed(0)
    return FinetuneClassifier(num_classes=num_classes, task=task, backbone="resnet18", loss=loss).eval()


def _targets(task: str) -> tuple[torch.Tensor, int]:
    if task == "binary":
        return torch.tensor([1.0, 0.0, 1.0, 0.0]), 2  # samples 1 and 3 have no positive
    # multilabel, 3 labels: sample 1 is all-negative
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), 3


@pytest.mark.parametrize("task", ["binary", "multilabel"])
@pytest.mark.parametrize("loss_class", OVERLAP)
def test_global_overlap_loss_trains_on_all_negative_samples(task: str, loss_class) -> None:
    target, num_classes = _targets(task)
    loss = loss_class(task=task, num_classes=None if task == "binary" else num_classes)  # global, empty_target="ignore"
    model = _model(task, loss, num_classes)
    logits = torch.randn(4, model.num_outputs, requires_grad=True)
    prepared = model.prepare_target(target)
    optimized = model.compute_loss({keys.LOGITS: logits}, prepared)
    # Exactly the configured loss of the batch, not a mean of per-sample values.
    torch.testing.assert_close(optimized, loss(logits, prepared))
    optimized.backward()
    negative = 1
    assert logits.grad[negative].abs().sum() > 0, "an all-negative sample must get a gradient from a global overlap loss"
    # The configured loss is untouched; the per-sample copy serves callbacks only.
    assert loss.reduction == "mean" and loss.aggregation == "global"
    assert model.loss_per_sample.aggregation == "per_sample" and model.loss_per_sample.reduction == "none"
    assert model.sample_losses({keys.LOGITS: logits}, prepared).shape == (4,)


@pytest.mark.parametrize("loss_class", OVERLAP)
def test_multiclass_overlap_loss_is_optimized_as_configured(loss_class) -> None:
    loss = loss_class(task="multiclass", num_classes=3)
    model = _model("multiclass", loss, 3)
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(model.compute_loss({keys.LOGITS: logits}, target), loss(logits, target))


def test_training_step_optimizes_the_configured_bce_dice_on_a_batch() -> None:
    target, num_classes = _targets("multilabel")
    loss = BCEDiceLoss(task="multilabel", num_classes=num_classes)
    model = _model("multilabel", loss, num_classes).train()
    batch = {keys.IMAGE: torch.randn(4, 3, 32, 32), keys.TARGET: target, keys.INDEX: torch.arange(4)}
    out = model.training_step(batch, 0)
    assert out[keys.LOSS].requires_grad
    torch.testing.assert_close(out[keys.LOSS].detach(), loss(out[keys.LOGITS], target))
    assert out[keys.SAMPLE_LOSS].shape == (4,) and not out[keys.SAMPLE_LOSS].requires_grad


def test_per_sample_losses_of_a_mean_loss_average_to_it() -> None:
    loss = FocalLoss(task="multiclass", num_classes=3, gamma=2.0)
    model = _model("multiclass", loss, 3)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(model.sample_losses({keys.LOGITS: logits}, target).mean(), model.compute_loss({keys.LOGITS: logits}, target))


def test_auto_weights_from_class_counts() -> None:
    model = FinetuneClassifier(num_classes=3, task="multilabel", pos_weight="auto", class_counts=[10, 5, 1], num_train_samples=20)
    torch.testing.assert_close(model.loss.pos_weight, torch.tensor([10 / 10, 15 / 5, 19 / 1]))
    model = FinetuneClassifier(num_classes=2, class_weights="auto", class_counts=[30, 10])
    torch.testing.assert_close(model.loss.weight, torch.tensor([40 / 60, 40 / 20]))
    with pytest.raises(ValueError, match="class_counts"):
        FinetuneClassifier(num_classes=2, class_weights="auto")
    with pytest.raises(ValueError, match="pos_weight"):
        FinetuneClassifier(num_classes=3, pos_weight=[1.0, 2.0, 3.0])

"""Segmentation metrics against a hand-computed confusion matrix; ignore_index changes neither loss nor metrics."""

from __future__ import annotations

import math

import pytest
import torch

from lit_finetune.tasks import SegmentationTask
from lit_finetune.tasks.segmentation_metrics import PixelConfusionMatrix, confusion_counts

# A fixed 1 x 3 x 4 example: true and predicted classes, 255 unlabeled.
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [255, 255, 2, 0]]])
PRED = torch.tensor([[[0, 1, 1, 1], [0, 2, 1, 1], [2, 0, 2, 0]]])
# Counted by hand over the 10 labeled pixels (rows: true, columns: predicted):
#   true 0: (0,0)->0 (0,1)->1 (1,0)->0 (2,3)->0  => [3, 1, 0]
#   true 1: (0,2)->1 (0,3)->1 (1,3)->1           => [0, 3, 0]
#   true 2: (1,1)->2 (1,2)->1 (2,2)->2           => [0, 1, 2]
HAND = torch.tensor([[3, 1, 0], [0, 3, 0], [0, 1, 2]])
IOU = [3 / 4, 3 / 5, 2 / 3]  # tp / (tp + fp + fn): class 0: 3/(3+0+1); class 1: 3/(3+2+0); class 2: 2/(2+0+1)
DICE = [6 / 7, 6 / 8, 4 / 5]


def logits_of(pred: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * 5


def test_confusion_counts_equal_hand_count():
    assert torch.equal(confusion_counts(PRED, TARGET, 3, ignore_index=255), HAND)


def test_epoch_metrics_equal_hand_computed_values():
    task = SegmentationTask(3, ["bg", "a", "b"])
    metrics = task.build_metrics()
    # Fed in two batches of one row each way: the epoch value comes from the summed matrix.
    for rows in (slice(0, 1), slice(1, 3)):
        metrics.update(*task.metric_inputs(logits_of(PRED)[:, :, rows], TARGET[:, rows]))
    # One matrix serves every score: the per-class IoU and the reports read the matrix the metrics updated.
    assert torch.equal(task.epoch_confusion(metrics), HAND)
    values = metrics.compute()
    assert float(values["miou"]) == pytest.approx(sum(IOU) / 3, abs=1e-6)
    assert float(values["dice"]) == pytest.approx(sum(DICE) / 3, abs=1e-6)
    assert float(values["pixel_acc"]) == pytest.approx(8 / 10)
    assert task.build_class_metrics() is None
    assert {k: round(float(v), 6) for k, v in task.epoch_class_values(metrics, None).items()} == {
        "iou/bg": round(IOU[0], 6),
        "iou/a": round(IOU[1], 6),
        "iou/b": round(IOU[2], 6),
    }


def test_epoch_miou_is_not_a_mean_of_batch_means():
    task = SegmentationTask(2)
    metric = task.build_metrics()
    big_t, big_p = torch.ones(1, 10, 10, dtype=torch.long), torch.ones(1, 10, 10, dtype=torch.long)
    small_t, small_p = torch.tensor([[[0, 1]]]), torch.tensor([[[1, 1]]])
    batch_means = []
    for t, p in ((big_t, big_p), (small_t, small_p)):
        single = task.build_metrics()
        single.update(*task.metric_inputs(logits_of(p, 2), t))
        batch_means.append(float(single.compute()["miou"]))
        metric.update(*task.metric_inputs(logits_of(p, 2), t))
    # Whole epoch: class 0 has 1 pixel, never predicted (IoU 0); class 1: 101 right of 102 predicted (IoU 101/102).
    assert float(metric.compute()["miou"]) == pytest.approx((0 + 101 / 102) / 2, abs=1e-6)
    assert float(metric.compute()["miou"]) != pytest.approx(sum(batch_means) / 2, abs=1e-3)


def test_absent_class_is_left_out_of_the_mean():
    metric = PixelConfusionMatrix(4)
    metric.update(PRED, TARGET)
    task = SegmentationTask(4)
    metrics = task.build_metrics()
    metrics.update(PRED, TARGET)  # class 3 appears nowhere: mean over the three present classes
    assert float(metrics.compute()["miou"]) == pytest.approx(sum(IOU) / 3, abs=1e-6)


def test_ignored_pixels_change_neither_loss_nor_metrics():
    torch.manual_seed(0)
    task = SegmentationTask(3)
    loss = task.default_loss()
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :3] = 255
    other = target.clone()
    changed_logits = logits.clone()
    changed_logits[:, :, :3] = torch.randn(2, 3, 3, 8) * 10  # any prediction on the ignored pixels
    first, second = task.build_metrics(), task.build_metrics()
    first.update(*task.metric_inputs(logits, target))
    second.update(*task.metric_inputs(changed_logits, other))
    assert {k: float(v) for k, v in first.compute().items()} == {k: float(v) for k, v in second.compute().items()}
    assert float(loss(logits, target)) == pytest.approx(float(loss(changed_logits, other)), abs=1e-6)
    # Dropping the ignored rows altogether gives the same loss and metrics too.
    third = task.build_metrics()
    third.update(*task.metric_inputs(logits[:, :, 3:], target[:, 3:]))
    assert float(third.compute()["miou"]) == pytest.approx(float(first.compute()["miou"]))
    assert float(loss(logits[:, :, 3:], target[:, 3:])) == pytest.approx(float(loss(logits, target)), abs=1e-6)


def test_binary_task_scores_background_and_foreground():
    task = SegmentationTask(2, ["bg", "fg"], mode="binary")
    target = torch.tensor([[[0, 1, 1, 255]]])
    logits = torch.tensor([[[[-3.0, 3.0, -3.0, 3.0]]]])  # predicted 0 1 0 (1 on an ignored pixel)
    metrics = task.build_metrics()
    metrics.update(*task.metric_inputs(logits, target))
    values = metrics.compute()
    assert float(values["miou"]) == pytest.approx((1 / 2 + 1 / 2) / 2)  # bg: 1/(1+1); fg: 1/(1+1)
    assert float(values["pixel_acc"]) == pytest.approx(2 / 3)
    assert task.num_outputs == 1 and task.predict(logits).pred.tolist() == [[[0, 1, 0, 1]]]
    assert math.isfinite(float(task.default_loss()(logits, target)))


def test_bad_targets_and_options_are_refused_with_a_hint():
    task = SegmentationTask(3)
    with pytest.raises(ValueError, match="integer masks"):
        task.prepare_target(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="integer masks"):
        task.prepare_target(torch.zeros(2, 3, 8, 8, dtype=torch.long))
    assert task.prepare_target(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 8, 8)
    with pytest.warns(UserWarning, match="ignore_index=1 is a class index"):
        SegmentationTask(3, ignore_index=1)
    with pytest.raises(ValueError, match="ignore_index=0 is a class of binary targets"):
        SegmentationTask(2, mode="binary", ignore_index=0)
    with pytest.raises(ValueError, match="num_classes 1 or 2"):
        SegmentationTask(3, mode="binary")


def test_prediction_rows_give_class_shares():
    task = SegmentationTask(3, ["bg", "cat", "dog"])
    logits = logits_of(torch.tensor([[[1, 1, 1, 0]]]))
    prediction = task.predict(logits)
    assert prediction.pred.shape == (1, 1, 4) and prediction.probs.shape == (1, 3, 1, 4)
    assert task.prediction_row(prediction, 0) == ["cat bg", "0.750000 0.250000"]
    assert task.target_text(torch.tensor([[0, 0, 255, 2]])) == "bg 67% dog 33%"

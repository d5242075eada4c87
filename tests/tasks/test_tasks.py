"""The task objects: targets, predictions, metrics and captions, against hand computations."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from lit_finetune.tasks import BinaryTask, MulticlassTask, MultilabelTask, build_task


def test_multilabel_predictions_use_per_class_thresholds() -> None:
    task = MultilabelTask(3, ["cat", "dog", "fox"], threshold=[0.5, 0.3, 0.9])
    logits = torch.logit(torch.tensor([[0.6, 0.35, 0.8], [0.4, 0.2, 0.95]]))
    prediction = task.predict(logits)
    assert prediction.labels.tolist() == [[True, True, False], [False, False, True]]
    assert task.prediction_text(prediction, 0) == "cat+dog"
    assert task.prediction_row(prediction, 1)[0] == "fox"
    assert task.prediction_columns()[:2] == ["labels", "probabilities"]
    assert task.target_text(torch.tensor([0.0, 1.0, 1.0])) == "dog+fox"
    assert task.target_text(torch.zeros(3)) == "-"


def test_multilabel_metrics_match_sklearn_at_the_thresholds() -> None:
    torch.manual_seed(0)
    thresholds = [0.5, 0.3, 0.7]
    task = MultilabelTask(3, threshold=thresholds)
    logits = torch.randn(40, 3) * 2
    target = (torch.rand(40, 3) > 0.5).float()
    metrics = task.build_metrics()
    metrics.update(*task.metric_inputs(logits, target))
    result = metrics.compute()
    probs = logits.sigmoid().numpy()
    decided = probs > torch.tensor(thresholds).numpy()
    expected_map = average_precision_score(target.numpy(), probs, average="macro")
    assert float(result["map"]) == pytest.approx(expected_map, abs=1e-5)
    assert float(result["f1_macro"]) == pytest.approx(f1_score(target.numpy(), decided, average="macro"), abs=1e-5)
    assert float(result["f1_micro"]) == pytest.approx(f1_score(target.numpy(), decided, average="micro"), abs=1e-5)
    assert float(result["exact_match"]) == pytest.approx(float((decided == target.numpy().astype(bool)).all(1).mean()))
    per_class = task.build_class_metrics()
    per_class.update(*task.metric_inputs(logits, target))
    result = per_class.compute()
    assert float(result["ap/1"]) == pytest.approx(average_precision_score(target[:, 1].numpy(), probs[:, 1]), abs=1e-5)
    assert float(result["f1/2"]) == pytest.approx(f1_score(target[:, 2].numpy(), decided[:, 2]), abs=1e-5)


def test_binary_task_explains_the_predicted_class() -> None:
    task = BinaryTask(2, ["cat", "dog"])
    logits = torch.tensor([[2.0], [-3.0]])
    prediction = task.predict(logits)
    assert prediction.pred.tolist() == [1, 0]
    torch.testing.assert_close(prediction.prob, torch.sigmoid(torch.tensor([2.0, 3.0])))
    explained = task.explained_logits(logits)
    # Column 0 scores "cat" (the negative class) and grows as the logit falls.
    assert explained[1, task.explained_class(logits)[1]] == 3.0 and explained[0, task.explained_class(logits)[0]] == 2.0
    assert task.prepare_target(torch.tensor([1, 0])).shape == (2, 1)
    assert task.prediction_text(prediction, 1) == "cat 0.95"


def test_multiclass_targets_and_soft_labels() -> None:
    task = MulticlassTask(3)
    assert task.prepare_target(torch.tensor([0, 2])).dtype == torch.long
    soft = torch.tensor([[0.7, 0.3, 0.0]])
    assert task.is_soft(soft) and not task.is_soft(torch.tensor([1]))
    with pytest.raises(ValueError, match="multilabel"):
        task.prepare_target(torch.ones(2, 5))


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="data.labels_csv"):
        MultilabelTask(4).prepare_target(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="choose one of"):
        build_task("segment", 3)
    with pytest.raises(ValueError, match="multiclass"):
        build_task("binary", 5)
    with pytest.raises(ValueError, match="one per class"):
        MultilabelTask(3, threshold=[0.5, 0.5])


def test_binary_is_not_a_multiclass_task() -> None:
    from lit_finetune.tasks import BinaryTask, MulticlassTask, SingleLabelTask

    task = BinaryTask(2, ["no", "yes"], threshold=0.3)
    assert not isinstance(task, MulticlassTask) and isinstance(task, SingleLabelTask)
    assert task.threshold == 0.3 and task.class_names == ["no", "yes"]


def test_loss_weight_auto_is_one_path_logged_on_rank_zero_only(caplog, monkeypatch) -> None:
    import logging

    from lightning.pytorch.utilities import rank_zero

    from lit_finetune.tasks import loss_weight

    task = MulticlassTask(2)
    with caplog.at_level(logging.INFO):
        weight = loss_weight(task, "auto", [18, 2], counted="pixel")
    torch.testing.assert_close(weight, torch.tensor([20 / (2 * 18), 20 / (2 * 2)]))  # inverse frequency, by hand
    assert "Loss weights from the pixel counts [18, 2]" in caplog.text
    caplog.clear()
    monkeypatch.setattr(rank_zero.rank_zero_only, "rank", 1)
    with caplog.at_level(logging.INFO):
        loss_weight(BinaryTask(2), "auto", [18, 2])
    assert "Loss weights" not in caplog.text
    assert loss_weight(MultilabelTask(2), "auto", [1, 4], num_samples=5).tolist() == [4.0, 0.25]  # (5 - p) / p
    with pytest.raises(ValueError, match="'2' \\(0 positives of 5\\)"):
        loss_weight(MultilabelTask(3), "auto", [1, 4, 0], num_samples=5)
    assert loss_weight(task, None, None) is None
    with pytest.raises(ValueError, match="need `class_counts`"):
        loss_weight(task, "auto", None)
    with pytest.raises(ValueError, match="3 loss weights given for 2 outputs"):
        loss_weight(task, [1.0, 2.0, 3.0], None)

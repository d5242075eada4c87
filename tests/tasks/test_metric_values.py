"""Every metric a classification task logs, through the module's real validation and test steps, equals scikit-learn's
value on awkward batches: logits that all lie in [0, 1] (which torchmetrics would take for probabilities), classes
absent from a batch or from the whole epoch. The reports that read the task's inputs are checked the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from planted_logits import NUM_CLASSES, THRESHOLD, loader, planted, planted_module, probabilities, reference_metrics
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, recall_score

from lit_finetune.callbacks.classification_report import ValidationReport
from lit_finetune.callbacks.test_report import TestReport
from lit_finetune.tasks import BinaryTask

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:No positive")]


def test_binary_logits_inside_0_1_are_logits() -> None:
    # The script of issue 15: logits 0.3, 0.6, 0.9 are all positive predictions (sigmoid > 0.5).
    task = BinaryTask()
    metrics = task.build_metrics()
    metrics.update(*task.metric_inputs(torch.tensor([[0.3], [0.6], [0.9]]), torch.ones(3)))
    result = metrics.compute()
    assert float(result["acc"]) == 1.0 and float(result["f1"]) == 1.0
    metrics.update(*task.metric_inputs(torch.tensor([[-0.9], [-0.6], [-0.3]]), torch.zeros(3)))
    assert float(metrics.compute()["auroc"]) == 1.0


def decisions(task: str) -> tuple[np.ndarray, np.ndarray]:
    """True labels and the task's decisions over the planted samples (multilabel: one column per label)."""
    logits, targets = planted(task)
    p = probabilities(task, logits)
    if task == "multiclass":
        return targets.numpy(), p.argmax(1)
    if task == "binary":
        return targets.numpy()[:, 0].astype(int), (p[:, 0] > THRESHOLD["binary"]).astype(int)
    return targets.numpy().astype(int), (p > np.asarray(THRESHOLD["multilabel"])).astype(int)


def check_classification_report(task: str, report: ValidationReport) -> None:
    y, pred = decisions(task)
    acc = report.metrics["acc"].compute().reshape(-1).numpy()
    if task == "multilabel":
        np.testing.assert_allclose(acc, (y == pred).mean(0), atol=1e-6)  # per label, at its threshold
        return
    labels = list(range(NUM_CLASSES[task]))
    if task == "binary":
        np.testing.assert_allclose(acc, [(y == pred).mean()], atol=1e-6)  # at the task's threshold, 0.3
    else:
        np.testing.assert_allclose(acc, recall_score(y, pred, labels=labels, average=None, zero_division=0), atol=1e-6)
    np.testing.assert_array_equal(report.confusion.numpy(), confusion_matrix(y, pred, labels=labels))


def check_test_report(task: str, report: TestReport) -> None:
    y, pred = decisions(task)
    labels = list(range(NUM_CLASSES[task])) if task != "multilabel" else None
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    rows = report.rows[: len(precision)]
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-6)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-6)
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-6)
    assert [r["support"] for r in rows] == support.tolist()


def assert_logged(trainer: Trainer, expected: dict[str, float]) -> None:
    logged = {name: float(value) for name, value in trainer.callback_metrics.items()}
    assert set(logged) == set(expected)  # every logged metric is checked, and none is missing
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=1e-5), name


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_every_logged_epoch_metric_equals_sklearn(task: str, tmp_path) -> None:
    model = planted_module(task)
    report, test_report = ValidationReport(), TestReport(dirpath=str(tmp_path))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path)),
        callbacks=[report, test_report],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(model, loader(task), verbose=False)
    assert_logged(trainer, reference_metrics(task, "val"))
    check_classification_report(task, report)

    trainer.test(model, loader(task, batch_size=3), verbose=False)  # other batches (a short last one), the same values
    assert_logged(trainer, reference_metrics(task, "test"))
    check_test_report(task, test_report)

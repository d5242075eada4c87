"""TestReport: per-class precision, recall, F1, support and confusion matrix against scikit-learn, files and TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from recipes_module_helpers import tiny_data, tiny_model, tiny_trainer
from sklearn.metrics import classification_report, confusion_matrix, multilabel_confusion_matrix

from lit_finetune import keys
from lit_finetune.callbacks.test_report import TestReport
from lit_finetune.tasks import build_task

# A fixed example: 12 images, 3 classes; class 2 is never predicted (its precision is 0 by convention).
TARGET = [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
PRED = [0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0]
ML_TARGET = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]]
ML_PRED = [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0]]


def run_report(task_name: str, num_classes: int, logits: torch.Tensor, target: torch.Tensor, folder: Path) -> TestReport:
    """Feed the callback two batches the way a test loop does, with a stand-in trainer and module."""
    report = TestReport(dirpath=str(folder))
    module = SimpleNamespace(task=build_task(task_name, num_classes), device=torch.device("cpu"))
    trainer = SimpleNamespace(global_rank=0, loggers=[], log_dir=None, default_root_dir=str(folder), global_step=0)
    report.on_test_epoch_start(trainer, module)
    for part in (slice(0, 5), slice(5, None)):
        report.on_test_batch_end(trainer, module, {keys.LOGITS: logits[part], keys.TARGET: target[part]}, None, 0)
    report.on_test_epoch_end(trainer, module)
    return report


def read_rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "test_report.csv") as f:
        return {row["class"]: row for row in csv.DictReader(f)}


def assert_matches_sklearn(rows: dict[str, dict[str, str]], expected: dict, names: dict[str, str]) -> None:
    for ours, theirs in names.items():
        for column, key in [("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")]:
            assert float(rows[ours][column]) == pytest.approx(expected[theirs][key], abs=1e-6), (ours, column)


def test_multiclass_report_matches_sklearn(tmp_path: Path) -> None:
    logits = torch.nn.functional.one_hot(torch.tensor(PRED), 3).float() * 4
    run_report("multiclass", 3, logits, torch.tensor(TARGET), tmp_path)
    rows = read_rows(tmp_path)
    expected = classification_report(TARGET, PRED, output_dict=True, zero_division=0)
    assert_matches_sklearn(rows, expected, {"0": "0", "1": "1", "2": "2", "macro avg": "macro avg", "weighted avg": "weighted avg"})
    assert float(rows["accuracy"]["f1"]) == pytest.approx(expected["accuracy"])
    matrix = [[int(rows[str(i)][f"pred:{j}"]) for j in range(3)] for i in range(3)]
    assert matrix == confusion_matrix(TARGET, PRED).tolist()
    markdown = (tmp_path / "test_report.md").read_text()
    assert "| 2 | 0.0000 | 0.0000 | 0.0000 | 3 |" in markdown and "| 1 | 1 | 4 | 0 |" in markdown


def test_binary_report_has_both_classes(tmp_path: Path) -> None:
    target = [t % 2 for t in TARGET]
    pred = [p % 2 for p in PRED[::-1]]
    logits = (torch.tensor(pred).float() * 2 - 1).unsqueeze(1) * 3
    run_report("binary", 2, logits, torch.tensor(target).float(), tmp_path)
    rows = read_rows(tmp_path)
    expected = classification_report(target, pred, output_dict=True, zero_division=0)
    assert_matches_sklearn(rows, expected, {"0": "0", "1": "1", "macro avg": "macro avg", "weighted avg": "weighted avg"})
    assert [[int(rows[str(i)][f"pred:{j}"]) for j in range(2)] for i in range(2)] == confusion_matrix(target, pred).tolist()


def test_multilabel_report_per_label(tmp_path: Path) -> None:
    logits = (torch.tensor(ML_PRED).float() * 2 - 1) * 3
    run_report("multilabel", 3, logits, torch.tensor(ML_TARGET).float(), tmp_path)
    rows = read_rows(tmp_path)
    expected = classification_report(ML_TARGET, ML_PRED, output_dict=True, zero_division=0)
    assert_matches_sklearn(rows, expected, {"0": "0", "1": "1", "2": "2", "macro avg": "macro avg", "weighted avg": "weighted avg"})
    for i, cells in enumerate(multilabel_confusion_matrix(ML_TARGET, ML_PRED).tolist()):
        assert [int(rows[str(i)][c]) for c in ("tn", "fp", "fn", "tp")] == [cells[0][0], cells[0][1], cells[1][0], cells[1][1]]


def test_soft_targets_are_skipped(tmp_path: Path) -> None:
    logits = torch.nn.functional.one_hot(torch.tensor(PRED), 3).float() * 4
    soft = torch.full((12, 3), 1 / 3)
    report = run_report("multiclass", 3, logits, soft, tmp_path)
    assert report.rows == [] and not (tmp_path / "test_report.csv").exists()


def test_after_trainer_test_files_and_tensorboard(image_folder: Path, tmp_path: Path, one_thread) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    trainer = tiny_trainer(tmp_path, logger=logger, callbacks=[TestReport()])
    data = tiny_data(image_folder)
    data.setup("fit")
    trainer.test(tiny_model(class_names=data.class_names), dataloaders=data.val_dataloader(), verbose=False)
    folder = Path(logger.log_dir)
    rows = read_rows(folder)
    assert sum(int(rows[name]["support"]) for name in ("cat", "dog")) == 8
    events = EventAccumulator(str(folder)).Reload()
    assert "test_report/text_summary" in events.Tags()["tensors"]

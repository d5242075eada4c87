"""ValidationReport: confusion counts, per-class accuracy and histograms equal a direct count."""

from __future__ import annotations

import pytest
import torch
from callback_helpers import CLASSES, text_of, val_losses

from lit_finetune.callbacks.classification_report import ValidationReport


def _parse_table(text: str) -> list[list[int]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| true")]
    return [[int(v) for v in row.strip("| ").split(" | ")[1:]] for row in rows]


def test_confusion_matrix_equals_direct_count(full_run):
    _, logits, targets = val_losses(full_run)
    pred = logits.argmax(dim=1)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(targets.tolist(), pred.tolist(), strict=False):
        expected[t, p] += 1
    (text,) = text_of(full_run.events, "zz-report/confusion_matrix_counts")
    assert _parse_table(text) == expected.tolist()
    assert torch.equal(full_run.callbacks["report"].confusion, expected)
    assert len(full_run.events.Images("zz-report/confusion_matrix")) == 1
    for i, name in enumerate(CLASSES):
        (acc,) = full_run.events.Scalars(f"zz-report/acc/{name}")
        assert acc.value == pytest.approx(expected[i, i].item() / expected[i].sum().item())


def test_histograms_and_curves(full_run):
    _, logits, targets = val_losses(full_run)
    correct = (logits.argmax(dim=1) == targets).sum().item()
    (right,) = full_run.events.Histograms("zz-report/max_prob_correct") or [None]
    wrong = full_run.events.Histograms("zz-report/max_prob_wrong")
    n_right = right.histogram_value.num if right else 0
    n_wrong = wrong[0].histogram_value.num if wrong else 0
    assert (n_right, n_wrong) == (correct, len(targets) - correct)
    tags = full_run.events.Tags()["tensors"]
    assert {f"zz-report/pr_curve/{c}" for c in CLASSES} <= set(tags)
    assert "zz-report/most_confused/text_summary" in tags


def test_pr_curves_equal_a_direct_count(full_run):
    from tensorboard.util.tensor_util import make_ndarray

    _, logits, targets = val_losses(full_run)
    probs = logits.float().softmax(dim=1)
    for i, name in enumerate(CLASSES):
        curve = make_ndarray(full_run.events.Tensors(f"zz-report/pr_curve/{name}")[-1].tensor_proto)  # TP, FP, TN, FN, P, R
        thresholds = torch.linspace(0, 1, curve.shape[1])
        predicted = probs[:, i : i + 1] >= thresholds  # (N, T): positive at each threshold
        positive = (targets == i).unsqueeze(1)
        tp, fp = (predicted & positive).sum(0), (predicted & ~positive).sum(0)
        fn, tn = (~predicted & positive).sum(0), (~predicted & ~positive).sum(0)
        assert curve[:4].tolist() == [tp.tolist(), fp.tolist(), tn.tolist(), fn.tolist()], name
        assert curve[5] == pytest.approx((tp / positive.sum().clamp_min(1)).tolist())  # recall
        assert curve[0, 0] == positive.sum() and curve[1, 0] == (~positive).sum()  # threshold 0: everything positive


def test_validation():
    with pytest.raises(ValueError, match="num_thresholds.*got 1"):
        ValidationReport(num_thresholds=1)


def test_former_names_still_import() -> None:
    from lit_finetune import ClassificationReport as Top
    from lit_finetune.callbacks.classification_report import ClassificationReport
    from lit_finetune.tasks import TaskModule, TaskModuleProtocol

    assert ClassificationReport is ValidationReport and Top is ValidationReport
    assert TaskModule is TaskModuleProtocol

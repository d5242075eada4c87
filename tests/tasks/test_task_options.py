"""Options users bring from other tools: BCE label smoothing, ``pos_weight: auto`` on labels of one kind, a boolean
split column (fastai's ``is_valid``); and the per-step choices that must stay cheap: no average precision in
training, soft batches recognized without reading the target on the device."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lit_finetune import keys
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.modules.classifier import FinetuneClassifier
from lit_finetune.tasks import BinaryTask, MulticlassTask, MultilabelTask, has_soft_targets


def bce_by_hand(logits: np.ndarray, target: np.ndarray, pos_weight: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-logits))
    return float(np.mean(-(pos_weight * target * np.log(p) + (1 - target) * np.log(1 - p))))


@pytest.mark.parametrize("task, num_classes", [("multilabel", 3), ("binary", 2)])
def test_label_smoothing_smooths_the_bce_targets(task: str, num_classes: int) -> None:
    outputs = 3 if task == "multilabel" else 1
    pos_weight = [2.0, 0.5, 1.0][:outputs]
    model = FinetuneClassifier(num_classes=num_classes, task=task, backbone="resnet18", label_smoothing=0.2, pos_weight=pos_weight)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.2, 4.0]])[:, :outputs]
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])[:, :outputs]
    smoothed = target.numpy() * 0.8 + 0.1
    expected = bce_by_hand(logits.numpy(), smoothed, np.asarray(pos_weight))
    assert float(model.loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    # The per-sample copy the callbacks read smooths the same way.
    per_sample = model.loss_per_sample(logits, target).mean(1)
    assert float(per_sample.mean()) == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_with_a_loss_of_ones_own_is_an_error() -> None:
    with pytest.raises(ValueError, match="label_smoothing.*your own `loss`"):
        FinetuneClassifier(num_classes=3, task="multilabel", backbone="resnet18", loss=nn.BCEWithLogitsLoss(), label_smoothing=0.1)


def test_pos_weight_auto_names_the_labels_of_one_kind() -> None:
    task = MultilabelTask(3, ["cat", "dog", "fox"])
    torch.testing.assert_close(task.class_weights([2, 5, 1], 8), torch.tensor([3.0, 0.6, 7.0]))
    with pytest.raises(ValueError, match=r"'dog' \(8 positives of 8\).*'fox' \(0 positives of 8\)"):
        task.class_weights([2, 8, 0], 8)
    assert "'cat'" not in str(pytest.raises(ValueError, task.class_weights, [2, 8, 0], 8).value)
    binary = BinaryTask(2, ["ok", "defect"])
    torch.testing.assert_close(binary.class_weights([6, 2], 8), torch.tensor([3.0]))
    for counts in ([8, 0], [0, 8]):
        with pytest.raises(ValueError, match="'defect'"):
            binary.class_weights(counts, 8)
    with pytest.raises(ValueError, match="'defect'"):  # through the module, as the command line fills class_counts in
        FinetuneClassifier(
            num_classes=2, task="binary", class_names=["ok", "defect"], backbone="resnet18", pos_weight="auto", class_counts=[8, 0]
        )


def write_fastai_csv(root: Path, column: str, values: list[str]) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    path = root / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "labels", column])
        for i, value in enumerate(values):
            Image.fromarray(np.full((16, 16, 3), 20 * i, dtype=np.uint8)).save(images / f"{i}.png")
            writer.writerow([f"images/{i}.png", "cat dog" if i % 2 else "dog", value])
    return path


@pytest.mark.parametrize(
    "values", [["False", "True", "False", "True", "False"], ["0", "1", "0", "1", "0"], ["no", "YES", "no", "yes", "no"]]
)
def test_a_boolean_split_column_marks_validation_rows(tmp_path: Path, values: list[str]) -> None:
    path = write_fastai_csv(tmp_path, "is_valid", values)
    dm = ImageFolderDataModule(
        str(tmp_path),
        labels_csv=str(path),
        image_column="fname",
        split_column="is_valid",
        task="multilabel",
        num_workers=0,
        image_size=16,
        check_images=False,
    )
    assert sorted(Path(p).name for p, _ in dm.val_samples) == ["1.png", "3.png"]
    assert sorted(Path(p).name for p, _ in dm.train_samples) == ["0.png", "2.png", "4.png"]


def test_a_split_column_mixing_words_and_booleans_is_an_error(tmp_path: Path) -> None:
    path = write_fastai_csv(tmp_path, "split", ["train", "val", "1", "train", "val"])
    with pytest.raises(ValueError, match=r"line 4: '1'"):
        ImageFolderDataModule(
            str(tmp_path),
            labels_csv=str(path),
            image_column="fname",
            split_column="split",
            task="multilabel",
            num_workers=0,
            image_size=16,
            check_images=False,
        )


def test_average_precision_is_left_out_of_training() -> None:
    model = FinetuneClassifier(num_classes=3, task="multilabel", backbone="resnet18")
    assert "map" in model.val_metrics.keys(keep_base=True) and "map" in model.test_metrics.keys(keep_base=True)
    assert set(model.train_metrics.keys(keep_base=True)) == {"f1_micro", "f1_macro", "exact_match"}


def test_soft_batches_are_recognized_without_reading_the_target() -> None:
    # Meta tensors have no values: any read (bool, item) raises, as a device sync would be needed on a GPU.
    hard = {keys.TARGET: torch.zeros(4, 3, device="meta")}
    for task in (MultilabelTask(3), BinaryTask()):
        assert not has_soft_targets(task, hard)
        assert has_soft_targets(task, {**hard, keys.MIXED: True})
    assert has_soft_targets(MulticlassTask(3), hard)  # class probabilities (N, C): soft by their shape
    assert not has_soft_targets(MulticlassTask(3), {keys.TARGET: torch.zeros(4, dtype=torch.long, device="meta")})
    model = FinetuneClassifier(num_classes=3, task="multilabel", backbone="resnet18")
    assert not has_soft_targets(model.task, hard) and has_soft_targets(model.task, {**hard, keys.MIXED: True})

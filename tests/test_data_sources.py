"""Data sources, the seeded-split helper and the task classes' data side, against hand counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from lit_finetune.data import ClassFolderSource, ClassificationDataModule, ImageFolderDataModule, LabelsCsvSource, seeded_split
from lit_finetune.data.mixing import BatchMixer
from lit_finetune.data.sampling import balanced_weights
from lit_finetune.tasks import BinaryTask, MulticlassTask, MultilabelTask, task_type

SAMPLES = [(f"a{i:02d}", 0) for i in range(10)] + [(f"b{i:02d}", 1) for i in range(5)] + [("c00", 2)]


def write_image_folder(root, **kwargs):
    """The conftest's writer (tests/ is not a package, so it is loaded by path)."""
    import importlib.util
    from pathlib import Path as _Path

    spec = importlib.util.spec_from_file_location("_tests_conftest", _Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_image_folder(root, **kwargs)


def test_seeded_split_is_stratified_seeded_and_order_free() -> None:
    val, train = seeded_split(SAMPLES, 0.2, seed=3, group=lambda s: s[1], keep_single=True)
    assert Counter(t for _, t in val) == {0: 2, 1: 1}  # round(10*0.2), round(5*0.2); the single c00 stays in train
    assert sorted(val + train) == sorted(SAMPLES) and not set(val) & set(train)
    assert seeded_split(list(reversed(SAMPLES)), 0.2, seed=3, group=lambda s: s[1], keep_single=True) == (val, train)
    assert seeded_split(SAMPLES, 0.2, seed=4, group=lambda s: s[1], keep_single=True) != (val, train)
    chosen, rest = seeded_split(SAMPLES, 0.5, seed=0)
    assert len(chosen) == 8 and len(rest) == 8  # one group: round(16 * 0.5)


@pytest.mark.parametrize(
    ("task", "targets", "counts", "names"),
    [
        (MulticlassTask, [0, 2, 2, 1, 2], [1, 1, 3], ["x", "y", "z"]),
        (BinaryTask, [(0.0,), (1.0,), (0.0,), (0.0,)], [3, 1], ["negative", "positive"]),
        (MultilabelTask, [(1.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 0.0)], [2, 1, 1], ["x", "y", "z"]),
    ],
)
def test_task_classes_count_and_name_the_data(task, targets, counts, names) -> None:
    num_classes = 3 if task is not BinaryTask else 2
    assert task.class_counts(targets, num_classes) == counts
    assert task.count_names(["x", "y", "z"][:num_classes]) == names[: len(counts)]
    weights = balanced_weights(targets, task)  # the class and its name give the same weights
    torch.testing.assert_close(weights, balanced_weights(targets, task.name))


def test_task_classes_encode_labels() -> None:
    assert MulticlassTask.encode([2], 3) == 2
    assert BinaryTask.encode([1], 2) == (1.0,) and BinaryTask.encode([0], 2) == (0.0,)
    assert BinaryTask.encode([0], 1) == (1.0,)  # a single class column: its 1 is positive
    assert MultilabelTask.encode([0, 2], 3) == (1.0, 0.0, 1.0)
    assert task_type("binary") is BinaryTask
    with pytest.raises(ValueError, match="Unknown task 'multi'"):
        task_type("multi")


def test_mixer_takes_the_task_class() -> None:
    batch = {"image": torch.randn(4, 3, 8, 8), "target": torch.tensor([[1.0], [0.0], [1.0], [0.0]])}
    mixed = BatchMixer(mixup_alpha=0.4, num_classes=2, task=BinaryTask)(batch)
    assert mixed["target"].shape == (4, 1)


def test_sources_read_on_their_own(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "folders", classes=("ants", "bees"), per_class=5, size=16)
    splits = ClassFolderSource(root, val_fraction=0.4, split_seed=0).read(BinaryTask)
    assert splits.class_names == ["ants", "bees"]
    assert Counter(t for _, t in splits.val) == {(0.0,): 2, (1.0,): 2}  # round(5 * 0.4) of each class
    with pytest.raises(ValueError, match="class folders cannot give"):
        ClassFolderSource(root).read(MultilabelTask)
    csv_path = tmp_path / "folders" / "labels.csv"
    rows = [f"{Path(p).relative_to(root).as_posix()},{Path(p).parent.name}" for p, _ in splits.train + splits.val]
    csv_path.write_text("image,labels\n" + "\n".join(rows) + "\n")
    from_csv = LabelsCsvSource(csv_path, root, val_fraction=0.4).read(MulticlassTask)
    assert from_csv.class_names == ["ants", "bees"] and len(from_csv.train) == 6 and len(from_csv.val) == 4


def test_the_former_data_module_name_is_the_same_class() -> None:
    assert ImageFolderDataModule is ClassificationDataModule

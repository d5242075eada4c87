"""Labels from a CSV (labels column or one 0/1 column per class), task-shaped targets, and the digit_pairs demo."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_finetune import keys
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.data.demo import digit_tile, write_digit_pairs


def write_csv(root: Path, rows: list[list[str]], name: str = "labels.csv", images: bool = True) -> Path:
    """Write ``rows`` (header first) as a CSV under ``root``, and a 16 px PNG for each path in the first column."""
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for i, row in enumerate(rows[1:]):
            if row[0]:
                (root / row[0]).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((16, 16, 3), 10 * i, dtype=np.uint8)).save(root / row[0])
    path = root / name
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def data(root: Path, csv_path: Path | None = None, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("check_images", False)
    return ImageFolderDataModule(str(root), labels_csv=str(csv_path) if csv_path else None, num_workers=0, image_size=16, **kwargs)


def targets_by_name(samples) -> dict[str, object]:
    return {Path(path).name: target for path, target in samples}


SPLIT_ROWS = [
    ["image", "labels", "split"],
    ["img/a.png", "cat dog", "train"],
    ["img/b.png", "dog", "train"],
    ["img/c.png", "", "train"],
    ["img/d.png", "bird cat", "val"],
    ["img/e.png", "dog", "test"],
]


def test_label_column_gives_sorted_classes_and_multi_hot_targets(tmp_path: Path) -> None:
    dm = data(tmp_path, write_csv(tmp_path, SPLIT_ROWS), split_column="split", task="multilabel")
    assert dm.class_names == ["bird", "cat", "dog"]
    assert targets_by_name(dm.train_samples) == {"a.png": (0.0, 1.0, 1.0), "b.png": (0.0, 0.0, 1.0), "c.png": (0.0, 0.0, 0.0)}
    assert targets_by_name(dm.val_samples) == {"d.png": (1.0, 1.0, 0.0)}
    assert targets_by_name(dm.test_samples) == {"e.png": (0.0, 0.0, 1.0)}
    assert dm.class_counts == [0, 1, 2] and dm.num_train_samples == 3
    dm.setup("fit")
    sample = dm.val_set[0]
    assert sample[keys.TARGET].dtype == torch.float32 and sample[keys.TARGET].tolist() == [1.0, 1.0, 0.0]
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.TARGET].shape == (3, 3) and batch[keys.TARGET].sum().item() == 3.0


def test_label_separator(tmp_path: Path) -> None:
    rows = [["file", "tags", "split"], ["a.png", "red car|blue", "train"], ["b.png", "blue", "val"]]
    dm = data(
        tmp_path,
        write_csv(tmp_path, rows),
        image_column="file",
        label_column="tags",
        label_separator="|",
        split_column="split",
        task="multilabel",
    )
    assert dm.class_names == ["blue", "red car"]
    assert targets_by_name(dm.train_samples) == {"a.png": (1.0, 1.0)}


def test_one_column_per_class_keeps_column_order(tmp_path: Path) -> None:
    rows = [["image", "split", "dog", "cat"], ["a.png", "train", "1", "1"], ["b.png", "train", "0", "1"], ["c.png", "val", "0", "0"]]
    path = write_csv(tmp_path, rows)
    dm = data(tmp_path, path, label_column=None, split_column="split", task="multilabel")
    assert dm.class_names == ["dog", "cat"]
    assert targets_by_name(dm.train_samples) == {"a.png": (1.0, 1.0), "b.png": (0.0, 1.0)}
    assert dm.class_counts == [1, 2]
    only_dog = data(tmp_path, path, label_column=None, class_columns=["dog"], split_column="split", task="multilabel")
    assert only_dog.class_names == ["dog"] and targets_by_name(only_dog.train_samples) == {"a.png": (1.0,), "b.png": (0.0,)}


def test_class_cells_must_be_zero_or_one(tmp_path: Path) -> None:
    rows = [["image", "dog", "cat"], ["a.png", "1", "yes"], ["b.png", "2", "0"]]
    with pytest.raises(ValueError, match=r"(?s)line 2, column 'cat': 'yes'.*line 3, column 'dog': '2'"):
        data(tmp_path, write_csv(tmp_path, rows), label_column=None, task="multilabel")


def test_val_fraction_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    rows = [["image", "labels"]] + [[f"{i}.png", "a b" if i % 2 else "b"] for i in range(10)]
    path = write_csv(tmp_path, rows)
    dm = data(tmp_path, path, task="multilabel", val_fraction=0.2, split_seed=0)
    again = data(tmp_path, path, task="multilabel", val_fraction=0.2, split_seed=0)
    other = data(tmp_path, path, task="multilabel", val_fraction=0.2, split_seed=1)
    assert len(dm.train_samples) == 8 and len(dm.val_samples) == 2
    assert dm.val_samples == again.val_samples and dm.val_samples != other.val_samples
    assert not set(dm.val_samples) & set(dm.train_samples)


def test_multiclass_from_csv_gives_int_targets_split_per_class(tmp_path: Path) -> None:
    rows = [["image", "labels"]] + [[f"{i}.png", "cat" if i < 5 else "dog"] for i in range(10)]
    dm = data(tmp_path, write_csv(tmp_path, rows), val_fraction=0.2)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert sorted(t for _, t in dm.val_samples) == [0, 1]  # one image of each class held out
    assert dm.class_counts == [4, 4]
    dm.setup("fit")
    target = dm.train_set[0][keys.TARGET]
    assert isinstance(target, int) and target == targets_by_name(dm.train_samples)[Path(dm.train_set[0][keys.PATH]).name]


def test_multiclass_rows_need_exactly_one_label(tmp_path: Path) -> None:
    rows = [["image", "labels"], ["a.png", "cat"], ["b.png", "cat dog"], ["c.png", "dog"], ["d.png", ""]]
    with pytest.raises(ValueError, match=r"(?s)exactly one label.*line 3 \(b.png\): 2 labels.*line 5 \(d.png\): 0 labels.*multilabel"):
        data(tmp_path, write_csv(tmp_path, rows))


def test_binary_from_two_labels_and_from_one_class_column(tmp_path: Path) -> None:
    rows = [["image", "labels"]] + [[f"{i}.png", "ok" if i < 6 else "defect"] for i in range(8)]
    dm = data(tmp_path / "two", write_csv(tmp_path / "two", rows), task="binary", val_fraction=0.25)
    assert dm.class_names == ["defect", "ok"]  # the second name is the positive class
    assert set(targets_by_name(dm.train_samples + dm.val_samples).values()) == {(0.0,), (1.0,)}
    assert targets_by_name(dm.train_samples + dm.val_samples)["0.png"] == (1.0,)
    assert dm.class_counts == [1, 4]  # per class, round(n / 4) held out (at least one): 1 of 2 defects, 2 of 6 ok
    rows = [["image", "defect", "split"], ["a.png", "1", "train"], ["b.png", "0", "train"], ["c.png", "0", "train"], ["d.png", "1", "val"]]
    one = data(tmp_path / "one", write_csv(tmp_path / "one", rows), label_column=None, split_column="split", task="binary")
    assert one.class_names == ["defect"] and targets_by_name(one.train_samples) == {"a.png": (1.0,), "b.png": (0.0,), "c.png": (0.0,)}
    assert one.class_counts == [2, 1]
    one.setup("fit")
    assert one.val_set[0][keys.TARGET].shape == (1,) and one.val_set[0][keys.TARGET].item() == 1.0


def test_binary_needs_two_classes(tmp_path: Path) -> None:
    rows = [["image", "labels"], ["a.png", "x"], ["b.png", "y"], ["c.png", "z"]]
    with pytest.raises(ValueError, match="binary' needs two classes"):
        data(tmp_path, write_csv(tmp_path, rows), task="binary")


def test_folders_honour_the_task(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes=("cat", "dog"), per_class=5, size=16)
    dm = data(tmp_path, task="binary")
    assert set(targets_by_name(dm.train_samples).values()) == {(0.0,), (1.0,)}
    assert all(t == (1.0,) for p, t in dm.train_samples if "/dog/" in p)
    assert dm.class_counts == [4, 4]
    dm.setup("fit")
    assert dm.train_set[0][keys.TARGET].dtype == torch.float32 and dm.train_set[0][keys.TARGET].shape == (1,)
    assert isinstance(data(tmp_path).train_samples[0][1], int)
    with pytest.raises(ValueError, match="labels_csv"):
        data(tmp_path, task="multilabel")


def test_missing_csv_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"labels.csv' does not exist.*data.labels_csv"):
        data(tmp_path, tmp_path / "labels.csv")


def test_every_missing_image_is_counted_and_twenty_listed(tmp_path: Path) -> None:
    rows = [["image", "labels"], ["here.png", "a"]] + [[f"gone{i:02d}.png", "b"] for i in range(25)]
    path = write_csv(tmp_path, rows, images=False)
    Image.new("RGB", (16, 16)).save(tmp_path / "here.png")
    with pytest.raises(FileNotFoundError) as err:
        data(tmp_path, path)
    message = str(err.value)
    assert "25 of 26 images" in message and "and 5 more" in message
    assert all(f"gone{i:02d}.png" in message for i in range(20)) and "gone20.png" not in message and "here.png" not in message


def test_unknown_column_names_the_columns_and_the_closest(tmp_path: Path) -> None:
    path = write_csv(tmp_path, SPLIT_ROWS)
    with pytest.raises(ValueError, match=r"Column 'imgae' \(`data.image_column`\).*\['image', 'labels', 'split'\].*Did you mean 'image'"):
        data(tmp_path, path, image_column="imgae", task="multilabel")
    with pytest.raises(ValueError, match="Column 'splits'.*Did you mean 'split'"):
        data(tmp_path, path, split_column="splits", task="multilabel")
    with pytest.raises(ValueError, match="Column 'cat'.*class_columns"):
        data(tmp_path, path, label_column=None, class_columns=["cat"], task="multilabel")


def test_empty_image_cells_and_bad_splits_name_the_lines(tmp_path: Path) -> None:
    rows = [["image", "labels", "split"], ["a.png", "x", "train"], ["", "x", "train"], ["c.png", "y", "val"]]
    path = write_csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"(?s)empty 'image' cell.*line 3"):
        data(tmp_path, path, split_column="split")
    rows[2][0], rows[3][2] = "b.png", "valid"
    path = write_csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"(?s)train, val or test.*line 4: 'valid'"):
        data(tmp_path, path, split_column="split")


def test_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no rows"):
        data(tmp_path, write_csv(tmp_path, [["image", "labels"]]))


def test_a_split_column_without_val_rows(tmp_path: Path) -> None:
    rows = [["image", "labels", "split"], ["a.png", "x", "train"], ["b.png", "y", "train"]]
    with pytest.raises(ValueError, match="No val rows"):
        data(tmp_path, write_csv(tmp_path, rows), split_column="split")


def matching_digits(cell: np.ndarray, tiles: np.ndarray, targets: np.ndarray) -> set[int]:
    """The digits whose scans, as tiles, are exactly this cell."""
    return set(targets[(tiles == cell).all(axis=(1, 2))].tolist())


def test_digit_pairs_labels_are_the_digits_drawn(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    root = write_digit_pairs(tmp_path / "pairs", n_train=8, n_val=4)
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["train"] * 8 + ["val"] * 4
    digits = load_digits()
    tiles = np.stack([digit_tile(scan, 16) for scan in digits.images])
    for row in rows:
        labels = [int(d) for d in row["labels"].split(" ")]
        assert 2 <= len(labels) <= 3 and labels == sorted(set(labels))
        canvas = np.asarray(Image.open(root / row["image"]))
        assert canvas.shape == (48, 48)
        cells = [canvas[r : r + 16, c : c + 16] for r in range(0, 48, 16) for c in range(0, 48, 16)]
        drawn = [cell for cell in cells if cell.any()]
        assert len(drawn) == len(labels)
        found = [matching_digits(cell, tiles, digits.target) for cell in drawn]
        assert all(len(f) == 1 for f in found) and sorted(f.pop() for f in found) == labels
    stamp = (root / "labels.csv").stat().st_mtime_ns
    write_digit_pairs(root, n_train=8, n_val=4)
    assert (root / "labels.csv").stat().st_mtime_ns == stamp  # written once
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_digit_pairs_demo_defaults_to_its_csv(tmp_path: Path) -> None:
    root = write_digit_pairs(tmp_path / "pairs", n_train=10, n_val=4)
    dm = data(root, demo="digit_pairs", task="multilabel")
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert dm.class_names == sorted({d for r in rows for d in r["labels"].split()})
    assert len(dm.train_samples) == 10 and len(dm.val_samples) == 4
    first = targets_by_name(dm.train_samples)["00000.png"]
    assert [dm.class_names[i] for i, v in enumerate(first) if v] == rows[0]["labels"].split()

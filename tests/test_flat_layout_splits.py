"""One-folder layout (root/<class>/): test/ and val/ folders are splits, never classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_finetune.data import ImageFolderDataModule


def test_test_folder_is_the_test_split_not_a_class(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes=("ant", "bee"), per_class=5)
    make_image_folder(tmp_path / "test", classes=("ant", "bee"), per_class=2, seed=3)
    dm = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, num_workers=0)
    assert dm.class_names == ["ant", "bee"]
    test_dir = str(tmp_path / "test")
    assert not any(path.startswith(test_dir) for path, _ in dm.train_samples + dm.val_samples)
    assert len(dm.train_samples) + len(dm.val_samples) == 10
    assert sorted((Path(p).parent.name, t) for p, t in dm.test_samples) == [("ant", 0)] * 2 + [("bee", 1)] * 2


def test_val_folder_replaces_the_held_out_share(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes=("ant", "bee"), per_class=5)
    make_image_folder(tmp_path / "val", classes=("bee",), per_class=3, seed=4)
    dm = ImageFolderDataModule(str(tmp_path), num_workers=0)
    assert dm.class_names == ["ant", "bee"]
    assert len(dm.train_samples) == 10 and not dm.test_samples
    assert [t for _, t in dm.val_samples] == [1, 1, 1]
    assert all(Path(p).parent.parent.name == "val" for p, _ in dm.val_samples)


def test_only_split_folders_is_an_error(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "test", classes=("ant",), per_class=2)
    with pytest.raises(ValueError, match="no class folders besides"):
        ImageFolderDataModule(str(tmp_path), num_workers=0)

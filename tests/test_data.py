"""ImageFolderDataModule: layouts, dict samples, transforms, and errors before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from lit_finetune import keys
from lit_finetune.data import IMAGENET_MEAN, ImageDataset, ImageFolderDataModule, default_preprocessing


def test_train_val_layout_gives_dict_samples(image_folder: Path) -> None:
    dm = ImageFolderDataModule(str(image_folder), batch_size=4, num_workers=0, image_size=32)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert len(dm.train_samples) == 16 and len(dm.val_samples) == 8
    dm.setup("fit")
    sample = dm.val_set[5]
    assert sample[keys.IMAGE].shape == (3, 32, 32) and sample[keys.IMAGE].dtype == torch.float32
    assert sample[keys.INDEX] == 5
    assert sample[keys.TARGET] == (1 if "/dog/" in sample[keys.PATH] else 0)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {keys.IMAGE, keys.TARGET, keys.INDEX, keys.PATH}
    assert batch[keys.INDEX].tolist() == [0, 1, 2, 3]
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)


def test_normalization_matches_the_statistics(image_folder: Path) -> None:
    dm = ImageFolderDataModule(
        str(image_folder), num_workers=0, image_size=32, resize_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    dm.setup("fit")
    sample = dm.val_set[0]
    import numpy as np
    from PIL import Image

    raw = torch.from_numpy(np.asarray(Image.open(sample[keys.PATH]).convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(sample[keys.IMAGE], (raw - 0.5) / 0.25)


def test_flat_layout_is_split_per_class_with_a_fixed_seed(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path, classes=("a", "b", "c"), per_class=10)
    dm = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, split_seed=3, num_workers=0)
    again = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, split_seed=3, num_workers=0)
    other = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, split_seed=4, num_workers=0)
    assert dm.val_samples == again.val_samples and dm.val_samples != other.val_samples
    assert [t for _, t in dm.val_samples].count(0) == 2 and len(dm.val_samples) == 6
    assert not set(dm.val_samples) & set(dm.train_samples)
    assert len(dm.train_samples) + len(dm.val_samples) == 30


def test_default_preprocessing_comes_from_the_weights() -> None:
    pre = default_preprocessing("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert (pre.resize_size, pre.crop_size) == (384, 384)
    pre = default_preprocessing("resnet18", None)
    assert (pre.resize_size, pre.crop_size, pre.mean) == (256, 224, IMAGENET_MEAN)
    assert default_preprocessing("inception_v3", None).crop_size == 299


def test_digits_demo_is_written_once(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(str(tmp_path / "digits"), demo="digits", num_workers=0)
    assert dm.class_names == [str(d) for d in range(10)]
    assert len(dm.train_samples) + len(dm.val_samples) == 1797
    assert len(dm.val_samples) == 359
    first = dm.val_samples[0][0]
    stamp = Path(first).stat().st_mtime_ns
    Path(first).write_bytes(Path(first).read_bytes())  # touch one file: writing the digits again would change its time
    touched = Path(first).stat().st_mtime_ns
    again = ImageFolderDataModule(str(tmp_path / "digits"), demo="digits", num_workers=0)
    assert again.val_samples == dm.val_samples and Path(first).stat().st_mtime_ns == touched >= stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits-")]  # no temporary folder left


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*data.root"):
        ImageFolderDataModule(str(tmp_path / "nowhere"))


def test_no_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataModule(str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"\['cat'\].*hold no images"):
        ImageFolderDataModule(str(tmp_path))


def test_class_in_val_but_not_in_train(image_folder: Path, make_image_folder) -> None:
    make_image_folder(image_folder / "val", classes=("emu",), per_class=2)
    with pytest.raises(ValueError, match=r"class folders that the training data lacks: \['emu'\]"):
        ImageFolderDataModule(str(image_folder))


def test_empty_class(image_folder: Path) -> None:
    (image_folder / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"\['emu'\].*hold no images"):
        ImageFolderDataModule(str(image_folder))


def test_train_without_val(image_folder: Path) -> None:
    import shutil

    shutil.rmtree(image_folder / "val")
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        ImageFolderDataModule(str(image_folder))


def test_bad_options(image_folder: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ImageFolderDataModule(str(image_folder), batch_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        ImageFolderDataModule(str(image_folder), val_fraction=1.5)


def test_train_augment_off_trains_on_the_evaluation_pipeline(image_folder: Path) -> None:
    dm = ImageFolderDataModule(str(image_folder), num_workers=0, image_size=32, train_augment=False)
    dm.setup("fit")
    first, again = dm.train_set[3][keys.IMAGE], dm.train_set[3][keys.IMAGE]
    assert torch.equal(first, again)
    assert torch.equal(first, ImageDataset(dm.train_samples, dm.eval_transform)[3][keys.IMAGE])

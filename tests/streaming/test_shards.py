"""``optimize`` output (bytes as stored, targets, masks, metadata, bad files, overwrite) and what the streaming modules read back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset
from PIL import Image

from lit_finetune.cli import main
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.data.decode import decode_pil, decode_torchvision
from lit_finetune.data.segmentation import SegmentationDataModule
from lit_finetune.data.shards import optimize_datamodule, read_metadata
from lit_finetune.data.streaming import StreamingDataModule
from lit_finetune.data.streaming_segmentation import StreamingSegmentationDataModule


def raw_items(folder: Path) -> list[dict]:
    dataset = StreamingDataset(str(folder))
    return [dataset[i] for i in range(len(dataset))]


def batches(loader) -> dict[str, tuple]:
    """Every sample of a loader by its source path: (image, target)."""
    found = {}
    for batch in loader:
        for i, path in enumerate(batch["path"]):
            assert path not in found, f"{path} came twice"
            found[path] = (batch["image"][i], batch["target"][i])
    return found


def test_optimize_keeps_image_bytes_targets_and_metadata(class_shards: Path, class_folder: Path):
    meta = read_metadata(str(class_shards))
    assert (meta["kind"], meta["task"], meta["class_names"]) == ("classification", "multiclass", ["cat", "dog"])
    assert meta["splits"] == {"train": 24, "val": 8} and meta["class_counts"] == [12, 12]
    items = raw_items(class_shards / "train")
    paths = sorted(bytes(item["path"]).decode() for item in items)
    assert paths == sorted(str(p) for p in (class_folder / "train").rglob("*.png"))
    for item in items:
        path = bytes(item["path"]).decode()
        assert bytes(item["image"]) == Path(path).read_bytes()  # as stored: no re-encoding
        assert item["target"] == ["cat", "dog"].index(Path(path).parent.name)


def test_streamed_samples_equal_the_folder_modules(class_shards: Path, class_folder: Path):
    options = {"image_size": 32, "resize_size": 32, "num_workers": 0, "batch_size": 5}
    folder = ImageFolderDataModule(str(class_folder), **options)
    stream = StreamingDataModule(str(class_shards), decoder="pil", **options)
    assert stream.class_names == folder.class_names and stream.class_counts == folder.class_counts
    folder.setup("validate"), stream.setup("validate")
    expected, got = batches(folder.val_dataloader()), batches(stream.val_dataloader())
    assert got.keys() == expected.keys() and len(got) == 8
    for path, (image, target) in expected.items():
        assert torch.equal(got[path][0], image) and got[path][1] == target


def test_a_training_epoch_streams_every_sample_once_in_a_new_order(class_shards: Path):
    stream = StreamingDataModule(str(class_shards), image_size=32, resize_size=32, num_workers=0, batch_size=4, seed=1)
    stream.setup("fit")
    loader = stream.train_dataloader()
    epochs = [[int(i) for batch in loader for i in batch["index"]] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_bad_images_are_skipped_with_a_report_and_finished_outputs_are_kept(class_folder: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    for path in class_folder.rglob("*.png"):
        target = root / path.relative_to(class_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    broken = root / "train" / "cat" / "cat_000.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    output = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"1 of 32 images cannot be read"):
        meta = optimize_datamodule(ImageFolderDataModule(str(root), num_workers=0), str(output), num_workers=1)
    assert meta["splits"]["train"] == 23 and meta["class_counts"] == [11, 12]
    assert str(broken) not in {bytes(item["path"]).decode() for item in raw_items(output / "train")}
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one line, exit 2, before anything is scanned
        main(["optimize", "--output", str(output), "--data.root", str(root)])
    assert exit_info.value.code == 2
    assert "already holds optimized shards" in capsys.readouterr().err
    meta = optimize_datamodule(
        ImageFolderDataModule(str(root), num_workers=0, bad_images="skip"), str(output), num_workers=1, overwrite=True, splits=["train"]
    )
    assert meta["splits"] == {"train": 23}


def test_multilabel_csv_targets_and_the_task_check(tmp_path: Path):
    root = tmp_path / "data"
    labels = ["cat", "dog", "cat dog", "dog", "cat", "cat dog", "dog", "cat"]
    rows = ["image,labels,split"]
    root.mkdir()
    for i, label in enumerate(labels):
        Image.fromarray(np.full((32, 32, 3), 30 * i, dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{label},{'val' if i >= 6 else 'train'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    source = ImageFolderDataModule(str(root), labels_csv=str(root / "labels.csv"), split_column="split", task="multilabel", num_workers=0)
    optimize_datamodule(source, str(tmp_path / "out"), num_workers=1)
    stream = StreamingDataModule(str(tmp_path / "out"), task="multilabel", image_size=32, resize_size=32, num_workers=0, batch_size=3)
    assert stream.class_counts == source.class_counts == [4, 4]  # positives per class in the 6 training rows
    stream.setup("fit")
    targets = {
        Path(path).name: target.tolist() for batch in stream.train_dataloader() for path, target in zip(batch["path"], batch["target"])
    }
    expected = {f"{i}.png": [float("cat" in label), float("dog" in label)] for i, label in enumerate(labels[:6])}
    assert targets == expected
    with pytest.raises(ValueError, match=r"written for task 'multilabel'.*model.task: multilabel"):
        StreamingDataModule(str(tmp_path / "out"), task="multiclass")


def write_pairs(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        mask = np.zeros((24, 32), dtype=np.uint8)
        mask[:12, :16], mask[12:, 16:], mask[0, 0] = rng.integers(1, 3), rng.integers(1, 3), 255  # 255: ignore_index
        (folder / "images").mkdir(parents=True, exist_ok=True), (folder / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([mask * 90, mask * 40, mask], axis=-1).astype(np.uint8)).save(folder / "images" / f"{i}.png")
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"{i}.png")


def test_segmentation_shards_hold_the_training_targets(tmp_path: Path):
    root = tmp_path / "seg"
    write_pairs(root / "train", 6, seed=0), write_pairs(root / "val", 3, seed=1)
    options = {"image_size": 32, "eval_size": None, "num_workers": 0, "batch_size": 2}
    folder = SegmentationDataModule(str(root), class_names=["background", "a", "b"], **options)
    meta = optimize_datamodule(folder, str(tmp_path / "out"), num_workers=2)
    assert meta["kind"] == "segmentation" and meta["class_names"] == ["background", "a", "b"] and meta["ignore_index"] == 255
    stream = StreamingSegmentationDataModule(str(tmp_path / "out"), decoder="pil", **options)
    assert stream.palette == folder.palette and stream.class_counts == folder.class_counts
    folder.setup("validate"), stream.setup("validate")
    expected, got = batches(folder.val_dataloader()), batches(stream.val_dataloader())
    assert got.keys() == expected.keys() and len(got) == 3
    for path, (image, target) in expected.items():
        assert torch.equal(got[path][0], image) and torch.equal(got[path][1], target)
    with pytest.raises(ValueError, match="holds segmentation shards"):
        StreamingDataModule(str(tmp_path / "out"))


def test_torchvision_decoder_matches_pil_and_applies_exif_orientation():
    pixels = np.random.default_rng(0).integers(0, 255, size=(24, 40, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    pil = torch.from_numpy(np.asarray(decode_pil(buffer.getvalue()))).permute(2, 0, 1)
    fast = decode_torchvision(buffer.getvalue())
    assert tuple(pil.shape) == tuple(fast.shape) == (3, 40, 24)
    assert (pil.int() - fast.int()).abs().float().mean() < 2.0  # the same libjpeg decoding, up to IDCT rounding


def test_mixing_applies_to_streamed_training_batches(class_shards: Path):
    stream = StreamingDataModule(str(class_shards), mixup_alpha=0.4, image_size=32, resize_size=32, num_workers=0, batch_size=6)
    stream.setup("fit")
    batch = next(iter(stream.train_dataloader()))
    assert batch["mixed"] is True and batch["target"].shape == (6, 2)
    assert torch.allclose(batch["target"].sum(dim=1), torch.ones(6))  # class probabilities


def test_test_needs_a_test_split_and_predict_streams_the_validation_split(class_shards: Path):
    stream = StreamingDataModule(str(class_shards), image_size=32, resize_size=32, num_workers=0, batch_size=8)
    with pytest.raises(FileNotFoundError, match="no test split"):
        stream.setup("test")
    stream.setup("predict")
    assert len(batches(stream.predict_dataloader())) == 8

"""Point 4: bad images are listed before training and skipped (or stop the run); odd modes become RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from lightning.pytorch import Trainer
from PIL import Image
from reliability_helpers import write_images

from lit_finetune.cli import main
from lit_finetune.data.check import check_data
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.data.folder import load_rgb
from lit_finetune.modules.classifier import FinetuneClassifier


def _jpeg_bytes(size=(40, 24), mode="RGB", exif=None) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "CMYK": 4}[mode]
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8), mode=mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif) if exif is not None else img.save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_odd_files(folder) -> dict[str, str]:
    """Unreadable files (name -> expected reason fragment) next to convertible ones."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes()[:600])
    (folder / "truncated.png").write_bytes(_png_bytes()[:1500])
    (folder / "notes.png").write_text("not an image at all")
    Image.fromarray(np.full((32, 32), 7, np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(np.full((32, 32, 4), 200, np.uint8), mode="RGBA").save(folder / "rgba.png")
    palette = Image.fromarray(np.full((32, 32, 3), 30, np.uint8)).convert("P")
    palette.save(folder / "palette.png", transparency=0)
    (folder / "cmyk.jpg").write_bytes(_jpeg_bytes(mode="CMYK"))
    Image.fromarray(np.full((32, 32), 32896, np.uint16)).save(folder / "sixteen.png")  # 16-bit grayscale
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (folder / "rotated.jpg").write_bytes(_jpeg_bytes(size=(40, 24), exif=exif))
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated", "truncated.png": "truncated", "notes.png": "cannot identify image"}


def test_odd_modes_are_converted_to_rgb(tmp_path):
    write_odd_files(tmp_path)
    for name in ("gray.png", "rgba.png", "palette.png", "cmyk.jpg", "sixteen.png", "rotated.jpg"):
        assert load_rgb(str(tmp_path / name)).mode == "RGB", name
    assert np.asarray(load_rgb(str(tmp_path / "sixteen.png")))[0, 0].tolist() == [128, 128, 128]  # 32896 / 257, not clipped to 255
    assert np.asarray(load_rgb(str(tmp_path / "gray.png")))[0, 0].tolist() == [7, 7, 7]
    assert load_rgb(str(tmp_path / "rotated.jpg")).size == (24, 40)  # EXIF orientation applied


def test_check_data_lists_bad_files(tmp_path, capsys):
    bad = write_odd_files(tmp_path / "data" / "cls")
    found = check_data(str(tmp_path / "data"))
    assert sorted(b.path.rsplit("/", 1)[1] for b in found) == sorted(bad)
    for b in found:
        assert bad[b.path.rsplit("/", 1)[1]] in b.reason.lower()
    with pytest.raises(SystemExit) as done:
        main(["check-data", str(tmp_path / "data"), "--output", str(tmp_path / "bad.tsv")])
    assert done.value.code == 1
    out = capsys.readouterr().out
    assert "4 of 10 images cannot be read" in out and "truncated.jpg" in out
    assert len((tmp_path / "bad.tsv").read_text().splitlines()) == 4
    with pytest.raises(SystemExit) as done:  # the folder as an option works the same
        main(["check-data", "--root", str(tmp_path / "data")])
    assert done.value.code == 1 and "4 of 10 images cannot be read" in capsys.readouterr().out


def test_check_data_without_a_folder_says_how_to_give_one(capsys):
    with pytest.raises(SystemExit) as done:
        main(["check-data"])
    assert done.value.code == 2 and "--root data/my_images" in capsys.readouterr().err


def test_training_skips_bad_files_and_finishes_an_epoch(tmp_path):
    root = tmp_path / "data"
    write_images(root / "train", per_class=4)
    write_images(root / "val", per_class=2, seed=1)
    bad = write_odd_files(root / "train" / "a")
    (root / "val" / "b" / "zero.png").write_bytes(b"")
    dm = ImageFolderDataModule(str(root), batch_size=4, num_workers=1, image_size=32, resize_size=32, backbone="resnet18")
    model = FinetuneClassifier(num_classes=dm.num_classes, backbone="resnet18")
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.warns(UserWarning, match="5 of 29 images cannot be read"):
        trainer.fit(model, dm)  # the bad files are decoded in a worker process if not skipped
    assert trainer.current_epoch == 1 and trainer.global_step == 5  # 4*3 good + 6 converted odd files = 18 images, batches of 4
    skipped = {b.path.rsplit("/", 1)[1] for b in dm.bad_files}
    assert skipped == set(bad) | {"zero.png"}
    assert not any(p.rsplit("/", 1)[1] in skipped for p, _ in dm.train_set.samples + dm.val_set.samples)

    strict = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, image_size=32, resize_size=32, bad_images="error")
    with pytest.raises(ValueError, match="5 of 29 images cannot be read(.|\n)*truncated.jpg"):
        Trainer(max_epochs=1, accelerator="cpu", logger=False).fit(FinetuneClassifier(num_classes=3, backbone="resnet18"), strict)

"""Segmentation is scored on the user's masks: at each mask's own size, in padded batches of mixed sizes, with the
data's ``ignore_index`` reaching the model; binary segmentation logs the foreground's Dice and IoU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from PIL import Image
from seg_data_helpers import save_mask
from torch import Tensor

from lit_finetune import SegmentationDataModule, keys
from lit_finetune.cli import build_cli
from lit_finetune.modules.segmentation import SegmentationModule

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(24, 32), (20, 20), (30, 18), (17, 25), (26, 22)]


class ColourSegmenter(SegmentationModule):
    """Predicts the class of each pixel from its colour (channel c bright: class c): a model whose output is known."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        logits = images[:, :3] * 10
        extra = logits.new_full((len(images), self.num_outputs - 3, *images.shape[-2:]), -100.0)  # classes never predicted
        return {keys.LOGITS: torch.cat([logits, extra], 1)}


def write_colour_pairs(root: Path, seed: int = 0, ignore: int = 255) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of several sizes: a random colour per pixel (argmax = the predicted class) and a mask of classes 0-2,
    some pixels ``ignore``; class 3 never occurs. Returns ``(pixels, mask)`` in file order."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i, (h, w) in enumerate(SIZES):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        mask = np.where(rng.random((h, w)) < 0.7, pixels.argmax(-1), rng.integers(0, 3, size=(h, w)))  # mostly right
        mask[rng.random((h, w)) < 0.1] = ignore
        split = "train" if i < 2 else "val"
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / split / "images" / f"p{i}.png")
        save_mask(mask, root / split / "masks" / f"p{i}.png")
        if split == "val":
            pairs.append((pixels, mask))
    return pairs


def hand_count(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore: int) -> dict[str, float]:
    """mIoU, Dice and pixel accuracy over the classes that occur, from a confusion matrix counted with numpy."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pixels, mask in pairs:
        pred, keep = pixels.argmax(-1), mask != ignore
        np.add.at(confusion, (mask[keep], pred[keep]), 1)
    tp = np.diag(confusion).astype(float)
    union, total = confusion.sum(0) + confusion.sum(1) - tp, confusion.sum(0) + confusion.sum(1)
    occurs = total > 0
    return {
        "miou": float((tp / np.maximum(union, 1))[occurs].mean()),
        "dice": float((2 * tp / np.maximum(total, 1))[occurs].mean()),
        "pixel_acc": float(tp.sum() / confusion.sum()),
    }


def validate(model: SegmentationModule, dm: SegmentationDataModule) -> dict[str, float]:
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return {k: float(v) for k, v in trainer.validate(model, datamodule=dm, verbose=False)[0].items()}


def test_metrics_equal_a_hand_count_at_each_masks_own_size_in_padded_batches(tmp_path: Path) -> None:
    pairs = write_colour_pairs(tmp_path)
    # 3 validation pairs of 3 sizes in batches of 2 (two batches, one padded); class 3 never occurs.
    dm = SegmentationDataModule(str(tmp_path), num_classes=4, eval_size=None, batch_size=2, num_workers=0, mean=(0, 0, 0), std=(1, 1, 1))
    model = ColourSegmenter(4, decoder_channels=[8, 8, 8, 8])
    logged = validate(model, dm)
    expected = hand_count(pairs, 4, 255)
    for name in ("miou", "dice", "pixel_acc"):
        assert logged[f"val/{name}"] == pytest.approx(expected[name], abs=1e-6)
    assert "val/iou/3" not in logged  # absent from target and prediction: no IoU


def test_at_a_fixed_eval_size_the_logits_are_resized_to_each_mask(tmp_path: Path) -> None:
    pairs = write_colour_pairs(tmp_path, seed=1)
    dm = SegmentationDataModule(str(tmp_path), num_classes=4, eval_size=12, batch_size=3, num_workers=0, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    model = ColourSegmenter(4, decoder_channels=[8, 8, 8, 8])
    outputs = model._step_outputs(batch, "val")
    for i, (_, mask) in enumerate(pairs):
        h, w = mask.shape
        assert min(batch[keys.INPUT_SIZE][i].tolist()) == 12  # the image: shorter side 12, aspect kept
        image = dm.val_set[i][keys.IMAGE][None]  # the image alone, no batch padding
        reference = torch.nn.functional.interpolate(model(image)[keys.LOGITS], size=(h, w), mode="bilinear", align_corners=False)
        assert torch.allclose(outputs[keys.LOGITS][i, :, :h, :w], reference[0], atol=1e-4)
        assert (batch[keys.TARGET][i, h:] == 255).all() and (batch[keys.TARGET][i, :, w:] == 255).all()


def _config(tmp_path: Path, data: dict, model: dict | None = None) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": "test_seg_native_eval.ColourSegmenter", "init_args": {"decoder_channels": [8, 8, 8, 8], **(model or {})}},
        "data": {
            "class_path": "lit_finetune.SegmentationDataModule",
            "init_args": {
                "root": str(tmp_path / "data"),
                "num_workers": 0,
                "batch_size": 2,
                "eval_size": None,
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
                **data,
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_data_ignore_index_0_reaches_the_model_and_leaves_those_pixels_out_of_loss_and_metrics(tmp_path: Path) -> None:
    pairs = write_colour_pairs(tmp_path / "data", ignore=0)  # class 0 is the unlabelled value here
    with pytest.warns(UserWarning, match="ignore_index=0 is a class index"):
        cli = build_cli(["--config", str(_config(tmp_path, {"ignore_index": 0, "num_classes": 4}))], run=False)
    assert cli.model.task.ignore_index == 0 and cli.model.loss.ignore_index == 0
    logged = {k: float(v) for k, v in cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0].items()}
    expected = hand_count(pairs, 4, ignore=0)
    assert logged["val/miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert logged["val/pixel_acc"] == pytest.approx(expected["pixel_acc"], abs=1e-6)
    # The loss ignores them too: other colours where the mask holds 0 change nothing.
    for i, (pixels, mask) in enumerate(pairs, start=2):
        repainted = np.where((mask == 0)[..., None], 255 - pixels, pixels).astype(np.uint8)
        Image.fromarray(repainted).save(tmp_path / "data" / "val" / "images" / f"p{i}.png")
    again = {k: float(v) for k, v in cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0].items()}
    assert again["val/loss"] == pytest.approx(logged["val/loss"], rel=1e-5) and again["val/miou"] == pytest.approx(logged["val/miou"])
    changed = np.where((pairs[0][1] != 0)[..., None], 255 - pairs[0][0], pairs[0][0]).astype(np.uint8)  # and labelled pixels do
    Image.fromarray(changed).save(tmp_path / "data" / "val" / "images" / "p2.png")
    third = {k: float(v) for k, v in cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0].items()}
    assert third["val/loss"] != pytest.approx(logged["val/loss"], rel=1e-3)


def test_binary_segmentation_logs_the_foreground_dice_and_iou(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    expected = np.zeros((2, 2), dtype=np.int64)  # rows: true, columns: predicted
    for split, n in (("train", 2), ("val", 3)):
        for i in range(n):
            h, w = SIZES[i]
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            mask = (rng.random((h, w)) < 0.3).astype(np.uint8) * 255  # 0/255, the foreground in 30 %
            (tmp_path / split / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / split / "images" / f"b{i}.png")
            save_mask(mask, tmp_path / split / "masks" / f"b{i}.png")
            if split == "val":
                np.add.at(expected, ((mask > 0).astype(int), (pixels[..., 0] > 0).astype(int)), 1)  # predicted: red > 0
    dm = SegmentationDataModule(str(tmp_path), task="binary", eval_size=None, batch_size=2, num_workers=0, mean=(0, 0, 0), std=(1, 1, 1))
    model = ColourSegmenter(2, task="binary", decoder_channels=[8, 8, 8, 8])
    model.forward = lambda images: {keys.LOGITS: images[:, :1] * 1000 - 1e-3}  # foreground where red > 0
    logged = validate(model, dm)
    tp, fp, fn = expected[1, 1], expected[0, 1], expected[1, 0]
    assert logged["val/iou_fg"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
    assert logged["val/dice_fg"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    tn = expected[0, 0]
    assert logged["val/miou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2, abs=1e-6)  # the two-class mean

"""SegmentationDataModule: paired transforms, mask formats, errors before training, the demo, the mask writer."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from seg_data_helpers import block_mask, coordinate_pair, save_mask, write_pairs, write_split_root

from lit_finetune import SegmentationDataModule, SegmentationMaskWriter, keys
from lit_finetune.data import segmentation as seg
from lit_finetune.data.masks import default_palette, read_mask
from lit_finetune.data.segmentation_demo import SEGMENTATION_CLASSES, place_boxes, write_digit_segmentation
from lit_finetune.tasks.base import Prediction

pytestmark = pytest.mark.usefixtures("one_thread")

GRID_W = 64  # width of the coordinate image of seg_data_helpers.coordinate_pair


def module(root: Path, **options) -> SegmentationDataModule:
    options = {"num_workers": 0, "image_size": 32, "batch_size": 2, **options}
    return SegmentationDataModule(str(root), **options)


# ------------------------------------------------------------------------------------------- paired transforms
@pytest.mark.parametrize("crop", ["resized", "crop"])
def test_random_crop_and_flip_keep_image_and_mask_aligned(tmp_path: Path, crop: str) -> None:
    """The image encodes each pixel's source coordinates in red/green, the mask in its value: after the random
    crop and flip both must name the same source pixel (nearest vs bilinear sampling: within 1.25 px)."""
    coordinate_pair(tmp_path / "train"), coordinate_pair(tmp_path / "val")
    dm = module(tmp_path, num_classes=48 * GRID_W, crop_scale=(0.1, 1.0), mean=(0, 0, 0), std=(1, 1, 1), train_crop=crop)
    dm.setup("fit")
    flipped, origins = 0, set()
    for seed in range(30):
        torch.manual_seed(seed)
        sample = dm.train_set[0]
        image, mask = sample[keys.IMAGE], sample[keys.TARGET]
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64
        x_image, y_image = image[0] * 255 / 4, image[1] * 255 / 4
        x_mask, y_mask = (mask % GRID_W).float(), (mask // GRID_W).float()
        tolerance = 1.25 + 1e-3 if crop == "resized" else 1e-3
        assert (x_image - x_mask).abs().max() <= tolerance and (y_image - y_mask).abs().max() <= tolerance
        flipped += int(x_mask[0, -1] < x_mask[0, 0])
        origins.add(int(mask[0, 0]))
    assert 5 <= flipped <= 25 and len(origins) > 10  # flips and crops did vary


def test_crop_pads_masks_with_ignore_index(tmp_path: Path) -> None:
    write_split_root(tmp_path)  # 24x32 images, crops of 40: padded
    dm = module(tmp_path, num_classes=3, image_size=40, train_crop="crop", hflip=False, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("fit")
    sample = dm.train_set[0]
    image, mask = sample[keys.IMAGE], sample[keys.TARGET]
    padded = mask == 255
    assert padded.sum() == 40 * 40 - 24 * 32
    assert torch.all(image[:, padded] == 0)
    original = torch.from_numpy(read_mask(dm.train_pairs[0][1]))
    assert sorted(mask[~padded].tolist()) == sorted(original.flatten().tolist())


def test_evaluation_resizes_the_image_keeping_its_aspect_and_leaves_the_mask_as_stored(tmp_path: Path) -> None:
    write_split_root(tmp_path, num_classes=5)  # 24x32 pairs
    fixed = module(tmp_path, num_classes=5, image_size=16)
    fixed.setup("validate")
    sample = fixed.val_set[0]
    stored = torch.from_numpy(read_mask(fixed.val_pairs[0][1]))
    assert sample[keys.IMAGE].shape == (3, 16, 21) and torch.equal(sample[keys.TARGET], stored)  # shorter side 16, aspect kept
    full = module(tmp_path, num_classes=5, eval_size=None)
    full.setup("validate")
    batch = next(iter(full.val_dataloader()))
    assert batch[keys.IMAGE].shape == (2, 3, 24, 32) and torch.equal(batch[keys.TARGET][0], stored)
    assert batch[keys.ORIGINAL_SIZE].tolist() == batch[keys.INPUT_SIZE].tolist() == batch[keys.MASK_SIZE].tolist() == [[24, 32], [24, 32]]


def test_batches_of_mixed_sizes_are_padded_masks_with_ignore_index(tmp_path: Path) -> None:
    write_split_root(tmp_path)
    write_pairs(tmp_path / "val", 1, size=(20, 20), prefix="small")
    dm = module(tmp_path, num_classes=3, eval_size=None, eval_batch_size=4, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))  # sorted by name: img000, img001, small000
    assert batch[keys.IMAGE].shape == (3, 3, 24, 32) and batch[keys.TARGET].shape == (3, 24, 32)
    assert batch[keys.INPUT_SIZE].tolist() == batch[keys.MASK_SIZE].tolist() == [[24, 32], [24, 32], [20, 20]]
    small = torch.from_numpy(read_mask(dm.val_pairs[2][1]))
    assert torch.equal(batch[keys.TARGET][2, :20, :20], small)
    assert (batch[keys.TARGET][2, 20:] == 255).all() and (batch[keys.TARGET][2, :, 20:] == 255).all()
    assert (batch[keys.IMAGE][2, :, 20:] == 0).all() and (batch[keys.IMAGE][2, :, :, 20:] == 0).all()


# ------------------------------------------------------------------------------------------- mask formats
@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_index_palette_and_16_bit_masks_read_as_class_indices(tmp_path: Path, mode: str) -> None:
    values = block_mask(24, 32, 21, seed=3)
    values[0, :] = 255  # a VOC border: ignored
    path = save_mask(values, tmp_path / "m.png", mode)
    assert Image.open(path).mode == mode
    assert np.array_equal(read_mask(path), values)


def test_palette_masks_give_the_data_palette_and_voc_borders_stay_ignored(tmp_path: Path) -> None:
    write_split_root(tmp_path, num_classes=3, mode="P")
    first = read_mask(tmp_path / "train" / "masks" / "img000.png")
    first[0, 0] = 255
    save_mask(first, tmp_path / "train" / "masks" / "img000.png", "P")
    dm = module(tmp_path, num_classes=3, train_augment=False, image_size=None, eval_size=None)
    assert dm.palette == default_palette(3)
    dm.setup("fit")
    target = dm.train_set[0][keys.TARGET]
    assert target[0, 0] == 255 and torch.equal(target[1:], torch.from_numpy(first[1:]))


def test_binary_0_255_masks_map_to_0_1_without_any_option(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "train", 3, num_classes=2) + write_pairs(tmp_path / "val", 2, num_classes=2, seed=9)
    for _, mask in pairs:
        save_mask(read_mask(mask) * 255, mask)
    dm = module(tmp_path, task="binary", eval_size=None)
    dm.setup("fit")
    assert dm.ignore_index == -1 and dm.class_names == ["background", "foreground"]
    target = dm.val_set[0][keys.TARGET]
    assert torch.equal(target, torch.from_numpy(read_mask(dm.val_pairs[0][1]) // 255))
    counts = [int(sum((read_mask(m) == v).sum() for _, m in dm.train_pairs)) for v in (0, 255)]
    assert dm.class_counts == counts and sum(counts) == 3 * 24 * 32


def test_binary_masks_with_an_ignore_index_keep_it_and_positive_value_restricts_the_foreground(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "train", 3, num_classes=2) + write_pairs(tmp_path / "val", 2, num_classes=2, seed=9)
    values = read_mask(pairs[0][1])
    values[:, 0] = 255
    save_mask(values, pairs[0][1])
    dm = module(tmp_path, task="binary", eval_size=None, train_augment=False, ignore_index=255)
    dm.setup("fit")
    assert torch.equal(dm.train_set[0][keys.TARGET], torch.from_numpy(values))
    default = module(tmp_path, task="binary", eval_size=None, train_augment=False)  # 255 is foreground then
    default.setup("fit")
    assert torch.equal(default.train_set[0][keys.TARGET], torch.from_numpy((values > 0).astype(np.int64)))
    strict = module(tmp_path, task="binary", positive_value=1)
    with pytest.raises(ValueError, match=r"1 of 5 image/mask pairs cannot be used \(mask values must be 0, 1 or -1"):
        strict.setup("fit")


def test_class_counts_are_labelled_pixels_per_class_of_the_training_masks(tmp_path: Path) -> None:
    write_split_root(tmp_path, num_classes=4)
    masks = [read_mask(p) for p in sorted((tmp_path / "train" / "masks").iterdir())]
    masks[0][0, :] = 255  # ignored pixels count for no class
    save_mask(masks[0], tmp_path / "train" / "masks" / "img000.png")
    dm = module(tmp_path, num_classes=4)
    expected = np.bincount(np.concatenate([m[m != 255] for m in masks]), minlength=4).tolist()
    assert dm.class_counts is None  # no mask is read when the module is created
    dm.setup("fit")
    assert dm.class_counts == expected and sum(expected) == 4 * 24 * 32 - 32 and dm.num_train_samples == 4
    assert module(tmp_path, num_classes=4, check_masks=False).class_counts is None


def test_class_names_from_classes_txt_config_or_count(tmp_path: Path) -> None:
    write_split_root(tmp_path)
    assert module(tmp_path, num_classes=3).class_names == ["0", "1", "2"]
    assert module(tmp_path, class_names=["sky", "road", "car"]).num_classes == 3
    (tmp_path / "classes.txt").write_text("background\nroad\n\ncar\n")
    assert module(tmp_path).class_names == ["background", "road", "car"]
    with pytest.raises(ValueError, match="num_classes` is 4 but .*classes.txt names 3"):
        module(tmp_path, num_classes=4)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(ValueError, match="number of classes is unknown.*classes.txt"):
        module(tmp_path)


def test_split_by_val_fraction_is_seeded_and_disjoint(tmp_path: Path) -> None:
    write_pairs(tmp_path, 10)
    a, b, c = (module(tmp_path, num_classes=3, val_fraction=0.3, split_seed=s) for s in (1, 1, 2))
    assert len(a.val_pairs) == 3 and len(a.train_pairs) == 7 and not set(a.val_pairs) & set(a.train_pairs)
    assert a.val_pairs == b.val_pairs and a.val_pairs != c.val_pairs


def test_mask_suffix_pairs_names(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for _image, mask in write_pairs(tmp_path / split, 2):
            mask.rename(mask.with_name(mask.stem + "_mask.png"))
    dm = module(tmp_path, num_classes=3, mask_suffix="_mask")
    assert [Path(m).name for _, m in dm.train_pairs] == ["img000_mask.png", "img001_mask.png"]


# ------------------------------------------------------------------------------------------- errors before training
def test_missing_folders_and_no_images_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        module(tmp_path / "nowhere", num_classes=2)
    (tmp_path / "flat" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="masks.* does not exist"):
        module(tmp_path / "flat", num_classes=2)
    (tmp_path / "flat" / "masks").mkdir()
    with pytest.raises(ValueError, match="No images under"):
        module(tmp_path / "flat", num_classes=2)
    write_pairs(tmp_path / "split" / "train", 2)
    with pytest.raises(FileNotFoundError, match="train/ but no val/"):
        module(tmp_path / "split", num_classes=3)
    with pytest.raises(FileNotFoundError, match="predict_root"):
        module(tmp_path / "split", num_classes=3, predict_root=str(tmp_path / "nothing"))


def test_unmatched_images_and_masks_are_all_counted_and_20_listed(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path, 30)
    for _, mask in pairs[:25]:
        mask.unlink()
    save_mask(np.zeros((24, 32)), tmp_path / "masks" / "orphan.png")
    with pytest.raises(ValueError) as err:
        module(tmp_path, num_classes=3)
    text = str(err.value)
    assert "25 images have no mask" in text and "... and 5 more" in text and "img019.png" in text and "img020.png" not in text
    assert "1 masks have no image" in text and "orphan.png" in text


def test_mask_size_values_and_rgb_masks_are_errors_at_setup_with_every_offender(tmp_path: Path) -> None:
    write_split_root(tmp_path, num_classes=3, train=6)
    masks = sorted((tmp_path / "train" / "masks").iterdir())
    save_mask(np.zeros((10, 10)), masks[0])  # another size
    save_mask(np.full((24, 32), 7), masks[1])  # 7 >= num_classes
    values = read_mask(masks[2])
    values[0, 0] = 255  # ignore_index: fine
    save_mask(values, masks[2])
    Image.new("RGB", (32, 24), (255, 0, 0)).save(masks[3])  # an RGB mask
    image = tmp_path / "train" / "images" / "img004.png"
    image.write_bytes(image.read_bytes()[:-200])  # a truncated image: its header still reads
    dm = module(tmp_path, num_classes=3)
    dm.setup("validate")  # validate/test/predict do not scan
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert text.startswith("4 of 8 image/mask pairs cannot be used")
    assert f"image '{image}' cannot be read" in text
    assert f"{masks[0]}: mask is 10x10 (HxW) but its image" in text and "24x32" in text
    assert f"{masks[1]}: values [7]" in text
    assert f"{masks[3]}: mask '{masks[3]}' is a RGB image" in text and "palette PNGs" in text
    assert str(masks[2]) not in text


def test_the_mask_scan_runs_at_fit_only_and_reads_only_changed_files_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_finetune.data import mask_scan

    write_split_root(tmp_path)
    read: list[str] = []
    inspect = mask_scan.inspect_decoded
    monkeypatch.setattr(mask_scan, "inspect_decoded", lambda pair: read.append(pair[1]) or inspect(pair))
    for stage in ("validate", "predict"):
        module(tmp_path, num_classes=3).setup(stage)
    assert read == []
    module(tmp_path, num_classes=3).setup("fit")
    assert len(read) == 6
    changed = tmp_path / "val" / "masks" / "img001.png"
    save_mask(np.full((24, 32), 2), changed)
    dm = module(tmp_path, num_classes=3)
    dm.setup("fit")
    assert read[6:] == [str(changed)] and dm.class_counts is not None


def test_bad_options_are_errors(tmp_path: Path) -> None:
    write_split_root(tmp_path)
    for options, message in (
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"task": "multilabel"}, "task"),
        ({"demo": "digits"}, "digits_seg"),
        ({"train_crop": "center"}, "train_crop"),
        ({"palette": [(0, 0, 0)]}, "3 RGB colours"),
        ({"task": "binary", "num_classes": 3}, "binary"),
    ):
        with pytest.raises(ValueError, match=message):
            module(tmp_path, **{"num_classes": 3, **options})


# ------------------------------------------------------------------------------------------- demo
def test_demo_writes_consistent_images_and_masks_deterministically(tmp_path: Path) -> None:
    root = write_digit_segmentation(tmp_path / "a", n_train=6, n_val=3)
    again = write_digit_segmentation(tmp_path / "b", n_train=6, n_val=3)
    assert (root / "classes.txt").read_text().split() == SEGMENTATION_CLASSES == ["background", *"0123456789"]
    names = sorted(p.name for p in (root / "train" / "images").iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in (root / "train" / "masks").iterdir())
    for split, count in (("train", 6), ("val", 3)):
        for i in range(count):
            image = np.asarray(Image.open(root / split / "images" / f"{i:05d}.png"))
            mask = read_mask(root / split / "masks" / f"{i:05d}.png")
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
            assert np.array_equal(image, np.asarray(Image.open(again / split / "images" / f"{i:05d}.png")))
            assert mask.max() <= 10 and len(np.unique(mask)) >= 2  # background and digits (two may be the same digit)
            grey = image[..., 0].astype(int)
            assert np.array_equal(grey, image[..., 2])
            # stroke pixels are bright, the background dark
            assert grey[mask > 0].min() > grey[mask == 0].mean() and grey[mask > 0].mean() > 2 * grey[mask == 0].mean()


def test_demo_places_two_to_four_digits_inside_the_canvas_without_overlap() -> None:
    rng = np.random.default_rng(0)
    placed = []
    for _ in range(300):  # drawn as compose_canvas draws them: 2-4 sides of 16-30, largest first
        sides = sorted(rng.integers(16, 31, size=int(rng.integers(2, 5))).tolist(), reverse=True)
        boxes = place_boxes(rng, 64, sides)
        placed.append(len(boxes))
        for i, (r, c, s) in enumerate(boxes):
            assert 0 <= r and r + s <= 64 and 0 <= c and c + s <= 64 and 16 <= s <= 30
            for r2, c2, s2 in boxes[i + 1 :]:
                assert r + s <= r2 or r2 + s2 <= r or c + s <= c2 or c2 + s2 <= c
    assert min(placed) >= 2 and max(placed) == 4


def test_demo_option_writes_the_demo_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seg, "write_digit_segmentation", functools.partial(write_digit_segmentation, n_train=4, n_val=2))
    dm = SegmentationDataModule(str(tmp_path / "demo"), demo="digits_seg", image_size=32, num_workers=0)
    assert dm.num_classes == 11 and len(dm.train_pairs) == 4 and len(dm.val_pairs) == 2
    dm.setup("fit")
    sample = dm.train_set[0]
    assert sample[keys.IMAGE].shape == (3, 32, 32) and int(sample[keys.TARGET].max()) <= 10


# ------------------------------------------------------------------------------------------- mask writer
class StubTask:
    """What the writer asks of a task: argmax over channels, sigmoid > 0.5 for one channel."""

    def predict(self, logits: torch.Tensor) -> Prediction:
        if logits.shape[1] == 1:
            pred = (logits[:, 0].sigmoid() > 0.5).long()
        else:
            pred = logits.argmax(dim=1)
        return Prediction(logits, pred, torch.ones_like(pred, dtype=torch.float))


class StubSegmenter(LightningModule):
    """Logits that do not look at the pixels: class 1 on the left half, class 2 on the right (binary: top half 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.task = StubTask()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        n, _, h, w = batch[keys.IMAGE].shape
        logits = torch.zeros(n, self.channels, h, w)
        if self.channels == 1:
            logits[:, 0, : h // 2], logits[:, 0, h // 2 :] = 5.0, -5.0
        else:
            logits[:, 1, :, : w // 2], logits[:, 2, :, w // 2 :] = 10.0, 10.0
        prediction = self.task.predict(logits)
        return {keys.LOGITS: logits, keys.PREDICTION: prediction, **{k: batch[k] for k in (keys.INDEX, keys.PATH, keys.ORIGINAL_SIZE)}}


def predict_masks(
    tmp_path: Path, channels: int, overlay: bool = False, data_classes: int = 3, **options
) -> tuple[SegmentationDataModule, SegmentationMaskWriter]:
    write_split_root(tmp_path / "data", num_classes=data_classes)
    new = tmp_path / "new"
    write_pairs(new, 1, size=(20, 30), prefix="wide")
    write_pairs(new, 1, size=(40, 24), prefix="tall")
    dm = module(tmp_path / "data", predict_root=str(new / "images"), eval_size=16, **options)
    writer = SegmentationMaskWriter(str(tmp_path / "out"), overlay=overlay)
    trainer = Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.predict(StubSegmenter(channels), datamodule=dm)
    return dm, writer


def test_mask_writer_writes_palette_pngs_at_the_original_size(tmp_path: Path) -> None:
    palette = [(0, 0, 0), (10, 200, 30), (250, 5, 100)]
    dm, writer = predict_masks(tmp_path, channels=3, overlay=True, num_classes=3, palette=palette)
    assert sorted(p.name for p in writer.written) == ["tall000.png", "wide000.png"]
    for name, (h, w) in (("wide000", (20, 30)), ("tall000", (40, 24))):
        png = Image.open(tmp_path / "out" / f"{name}.png")
        assert png.mode == "P" and png.size == (w, h)
        assert png.getpalette()[:9] == [v for c in palette for v in c]
        mask = np.asarray(png)
        assert set(np.unique(mask)) == {1, 2}
        assert (mask[:, : w // 2 - 1] == 1).all() and (mask[:, w // 2 + 1 :] == 2).all()
        overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / f"{name}.png")).astype(int)
        image = np.asarray(Image.open(tmp_path / "new" / "images" / f"{name}.png")).astype(int)
        assert overlay.shape == (h, w, 3)
        expected = np.round(0.5 * image[0, 0] + 0.5 * np.array(palette[1]))
        assert np.abs(overlay[0, 0] - expected).max() <= 1


def test_mask_writer_binary_logits_give_0_1_masks(tmp_path: Path) -> None:
    _, writer = predict_masks(tmp_path, channels=1, data_classes=2, task="binary")
    mask = np.asarray(Image.open(tmp_path / "out" / "tall000.png"))
    assert mask.shape == (40, 24) and (mask[:19] == 1).all() and (mask[21:] == 0).all()


def test_predict_samples_carry_the_original_size_and_no_target(tmp_path: Path) -> None:
    write_split_root(tmp_path / "data")
    write_pairs(tmp_path / "new", 1, size=(20, 30))
    dm = module(tmp_path / "data", num_classes=3, predict_root=str(tmp_path / "new" / "images"), eval_size=16)
    dm.setup("predict")
    sample = dm.predict_set[0]
    assert keys.TARGET not in sample and sample[keys.IMAGE].shape == (3, 16, 24)  # 20x30: shorter side 16
    assert sample[keys.ORIGINAL_SIZE].tolist() == [20, 30] and sample[keys.ORIGINAL_SIZE].dtype == torch.long

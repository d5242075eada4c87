"""One resolver of sizes and normalization statistics, shared by data, modules and export."""

from __future__ import annotations

import pytest

from lit_finetune.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, configured_preprocessing, weights_preprocessing


def test_classification_and_segmentation_presets_resolve_in_one_place() -> None:
    pre = weights_preprocessing("resnet18", "IMAGENET1K_V1")
    assert (pre.resize_size, pre.crop_size, pre.mean, pre.std) == (256, 224, IMAGENET_MEAN, IMAGENET_STD)
    seg = weights_preprocessing("deeplabv3_mobilenet_v3_large", "DEFAULT")
    assert (seg.resize_size, seg.crop_size) == (520, 520)  # torchvision's SemanticSegmentation preset: one square size
    assert weights_preprocessing("inception_v3", None).crop_size == 299


def test_unknown_names_are_errors_unless_asked_for_defaults() -> None:
    with pytest.raises(ValueError):
        weights_preprocessing("resnet18", "NO_SUCH_WEIGHTS")
    assert weights_preprocessing("resnet18", "NO_SUCH_WEIGHTS", unknown_names=True) == weights_preprocessing(None, None)


def test_options_on_top_of_the_weights() -> None:
    pre = configured_preprocessing("resnet18", "IMAGENET1K_V1", image_size=112, mean=(0.5, 0.5, 0.5))
    assert (pre.resize_size, pre.crop_size, pre.mean, pre.std) == (128, 112, (0.5, 0.5, 0.5), IMAGENET_STD)  # 112 * 256 / 224
    assert configured_preprocessing("resnet18", None, image_size=64, resize_size=80).resize_size == 80
    square = configured_preprocessing("deeplabv3_mobilenet_v3_large", "DEFAULT", image_size=96, square=True)
    assert (square.resize_size, square.crop_size) == (96, 96)

"""The preprocessing that goes with weights: sizes and normalization statistics, resolved in one place.

The data modules build their transforms from it, the modules show images with its statistics, and export
writes it next to the model: :func:`weights_preprocessing` reads the weights' ``transforms()`` (torchvision's
classification presets: resize and crop; its segmentation presets: one square size), and
:func:`configured_preprocessing` applies the data module's options on top.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.transforms import v2

from lit_finetune.models.backbones import DEFAULT_INPUT_SIZE, resolve_weights
from lit_finetune.models.timm_backbones import is_timm_name, timm_preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEGMENTATION_SIZE = 520
"""Side of torchvision's segmentation presets that name no size."""


@dataclass(frozen=True)
class Preprocessing:
    """Sizes and normalization of the evaluation pipeline: resize, center crop, normalize."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR


def weights_preprocessing(backbone: str | None, weights: str | None, unknown_names: bool = False) -> Preprocessing:
    """The preprocessing of the named weights (their ``transforms()``: sizes, statistics, interpolation), else 256/224
    bilinear with ImageNet statistics (inception_v3: 342/299). A timm backbone (``timm/<name>``) uses its
    ``pretrained_cfg`` (see :func:`~lit_finetune.models.timm_backbones.timm_preprocessing`).

    A segmentation preset (fcn, deeplabv3, lraspp) has one square size: resize and crop are both that size.

    Args:
        backbone: the torchvision model name; None: the defaults.
        weights: the weights name; None or a local file: the defaults.
        unknown_names: a model or weights name torchvision does not know gives the defaults (an encoder name of
            another library; the model reports bad names) instead of an error.

    Raises:
        ValueError: an unknown name, unless ``unknown_names``.
    """
    if is_timm_name(backbone):  # the model's pretrained_cfg: input size, crop fraction, mean/std, interpolation
        return Preprocessing(*timm_preprocessing(backbone, weights))  # type: ignore[arg-type]
    try:
        enum = resolve_weights(backbone, weights) if backbone else None
    except ValueError:
        if not unknown_names:
            raise
        enum, backbone = None, None
    if enum is not None:
        preset = enum.transforms()
        if hasattr(preset, "crop_size"):
            return Preprocessing(
                int(preset.resize_size[0]), int(preset.crop_size[0]), tuple(preset.mean), tuple(preset.std), preset.interpolation
            )
        size = int(preset.resize_size[0]) if preset.resize_size else SEGMENTATION_SIZE
        return Preprocessing(size, size, tuple(preset.mean), tuple(preset.std), preset.interpolation)
    crop = DEFAULT_INPUT_SIZE.get(backbone or "", 224)
    return Preprocessing(round(crop * 256 / 224), crop, IMAGENET_MEAN, IMAGENET_STD)


def configured_preprocessing(
    backbone: str | None,
    weights: str | None,
    image_size: int | None = None,
    resize_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    square: bool = False,
) -> Preprocessing:
    """:func:`weights_preprocessing` with a data module's options applied.

    Args:
        backbone: the model name.
        weights: the weights name.
        image_size: crop size; None: the weights'.
        resize_size: short side before the crop; None: ``image_size`` scaled as the weights scale their crop.
        mean: normalization mean; None: the weights'.
        std: normalization std; None: the weights'.
        square: one size for resize and crop (segmentation: images are resized to ``image_size`` squares);
            names torchvision does not know then give the defaults.
    """
    pre = weights_preprocessing(backbone, weights, unknown_names=square)
    crop = image_size or pre.crop_size
    if square:
        resize = crop
    else:
        resize = resize_size or (round(crop * pre.resize_size / pre.crop_size) if image_size else pre.resize_size)
    return Preprocessing(resize, crop, tuple(mean or pre.mean), tuple(std or pre.std), pre.interpolation)  # type: ignore[arg-type]

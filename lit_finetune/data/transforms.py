"""Default transforms (torchvision transforms v2) and the normalization that goes with weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from lit_finetune.backbones import DEFAULT_INPUT_SIZE, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Sizes and normalization of the evaluation pipeline: resize, center crop, normalize."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR


def default_preprocessing(backbone: str | None, weights: str | None) -> Preprocessing:
    """Preprocessing of the named weights (their ``transforms()``: sizes, statistics, interpolation), else 256/224 bilinear with ImageNet statistics.

    inception_v3 without weights uses 342/299.
    """
    enum = resolve_weights(backbone, weights) if backbone else None
    if enum is not None:
        preset = enum.transforms()
        return Preprocessing(
            int(preset.resize_size[0]), int(preset.crop_size[0]), tuple(preset.mean), tuple(preset.std), preset.interpolation
        )
    crop = DEFAULT_INPUT_SIZE.get(backbone or "", 224)
    return Preprocessing(round(crop * 256 / 224), crop, IMAGENET_MEAN, IMAGENET_STD)


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Resize the short side, center crop, scale to [0, 1] and normalize."""
    return v2.Compose([v2.Resize(pre.resize_size, interpolation=pre.interpolation, antialias=True), v2.CenterCrop(pre.crop_size), *_to_normalized_tensor(pre.mean, pre.std)])


def train_transform(pre: Preprocessing, scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True) -> v2.Compose:
    """RandomResizedCrop to the crop size, an optional horizontal flip, then normalize."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(pre.crop_size, scale=scale, interpolation=pre.interpolation, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_normalized_tensor(pre.mean, pre.std))

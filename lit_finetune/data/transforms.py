"""Default transforms (torchvision transforms v2), the training augmentation presets, and the normalization
that goes with weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms import v2

from lit_finetune.models.backbones import DEFAULT_INPUT_SIZE, resolve_weights
from lit_finetune.models.timm_backbones import is_timm_name, timm_preprocessing

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

    inception_v3 without weights uses 342/299. A timm backbone (``timm/<name>``) uses its ``pretrained_cfg``
    (input size, crop fraction, mean/std, interpolation; see :func:`~lit_finetune.models.timm_backbones.timm_preprocessing`).
    """
    if is_timm_name(backbone):
        return Preprocessing(*timm_preprocessing(backbone, weights))
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


Augment = Literal["none", "basic", "randaugment", "trivialaugment", "autoaugment"]
AUGMENT_PRESETS: tuple[str, ...] = ("none", "basic", "randaugment", "trivialaugment", "autoaugment")
"""Names of the training augmentation presets, weakest first."""


def augment_policy(augment: str, interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR) -> v2.Transform | None:
    """The automatic augmentation policy of a preset (torchvision's defaults), or None for ``none``/``basic``.

    ``randaugment``: ``RandAugment()`` (2 operations of magnitude 9); ``trivialaugment``: ``TrivialAugmentWide()``
    (one operation of random magnitude); ``autoaugment``: ``AutoAugment`` with the ImageNet policy.

    Raises:
        ValueError: an unknown preset name.
    """
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"Unknown `augment` preset '{augment}'; choose one of {', '.join(AUGMENT_PRESETS)}.")
    if augment == "randaugment":
        return v2.RandAugment(interpolation=interpolation)
    if augment == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    if augment == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)
    return None


def train_transform(
    pre: Preprocessing,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    augment: Augment = "basic",
    random_erasing: float = 0.0,
) -> v2.Compose:
    """The training pipeline of a preset, then normalize, then an optional random erasing.

    ``none``: the evaluation geometry (resize, center crop), nothing random. ``basic``: ``RandomResizedCrop``
    to the crop size with area range ``scale``, and a horizontal flip if ``hflip``. ``randaugment``,
    ``trivialaugment``, ``autoaugment``: ``basic``, then the policy (as in torchvision's reference recipes).
    ``random_erasing`` is the probability of ``RandomErasing`` on the normalized tensor (it erases with
    zeros: the mean colour), for every preset.

    Args:
        pre: sizes and normalization.
        scale: area range of the random crop.
        hflip: random horizontal flips (all presets but ``none``).
        augment: the preset name.
        random_erasing: probability of erasing one random rectangle, in ``[0, 1]``.

    Raises:
        ValueError: an unknown preset or a probability outside ``[0, 1]``.

    Example::

        train_transform(Preprocessing(36, 32, IMAGENET_MEAN, IMAGENET_STD), augment="trivialaugment", random_erasing=0.25)
    """
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"`random_erasing` is a probability in [0, 1], got {random_erasing}.")
    policy = augment_policy(augment, pre.interpolation)
    if augment == "none":
        resize = v2.Resize(pre.resize_size, interpolation=pre.interpolation, antialias=True)
        steps: list[v2.Transform] = [resize, v2.CenterCrop(pre.crop_size)]
    else:
        steps = [v2.RandomResizedCrop(pre.crop_size, scale=scale, interpolation=pre.interpolation, antialias=True)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    if policy is not None:
        steps.append(policy)
    steps += _to_normalized_tensor(pre.mean, pre.std)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)

"""Default transforms (torchvision transforms v2), the training augmentation presets, and the normalization
that goes with weights."""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.transforms import v2

# Preprocessing and its statistics are resolved once, in models/preprocessing.py; importable from here too.
from lit_finetune.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing  # noqa: F401
from lit_finetune.models.preprocessing import weights_preprocessing as default_preprocessing  # noqa: F401


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Resize the short side, center crop, scale to [0, 1] and normalize."""
    return v2.Compose(
        [
            v2.Resize(pre.resize_size, interpolation=pre.interpolation, antialias=True),
            v2.CenterCrop(pre.crop_size),
            *_to_normalized_tensor(pre.mean, pre.std),
        ]
    )


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

"""Segmentation transforms: the paired training crops, the evaluation resize, and batches of mixed sizes.

Training crops an image and its mask alike (transforms v2 with ``tv_tensors.Mask``: nearest interpolation
for masks, padding filled with ``ignore_index``). Evaluation resizes the image only (shorter side to
``eval_size``, aspect kept, or full resolution) and leaves the mask as the user gave it: the module resizes
its logits to each mask's own size and scores there. :class:`PadCollate` batches images and masks of
different sizes by padding them (masks with ``ignore_index``) and records each one's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

from lit_finetune import keys


def _to_model_input(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """Images to normalized float32; masks untouched."""
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def segmentation_train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: Literal["resized", "crop"] = "resized",
    crop_scale: tuple[float, float] = (0.25, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    vflip: bool = False,
    ignore_index: int = 255,
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
) -> v2.Compose:
    """The same random crop and flips on an image and its mask, then the image normalized.

    Args:
        size: side of the square crop.
        mean: normalization mean.
        std: normalization std.
        crop: ``"resized"``: ``RandomResizedCrop`` (a random area ``crop_scale`` and aspect ``crop_ratio``,
            resized to ``size``); ``"crop"``: a ``size`` crop at the image's own scale, padding smaller images
            (image with 0, mask with ``ignore_index``).
        crop_scale: area range of the resized crop.
        crop_ratio: aspect range of the resized crop.
        hflip: random horizontal flips.
        vflip: random vertical flips.
        ignore_index: the mask value of padding.
        interpolation: the images' interpolation; masks always use nearest.

    Example::

        t = segmentation_train_transform(64, (0.5,) * 3, (0.25,) * 3)
        image, mask = t(tv_tensors.Image(uint8_chw), tv_tensors.Mask(long_hw))
    """
    if crop == "resized":
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio, interpolation=interpolation, antialias=True)
        ]
    elif crop == "crop":
        steps = [v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})]
    else:
        raise ValueError(f"`train_crop` must be 'resized' or 'crop', got {crop!r}.")
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose(steps + _to_model_input(mean, std))


class SegmentationEvalTransform(nn.Module):
    """The evaluation pipeline: the image resized (shorter side to ``size``, aspect kept) and normalized; the mask untouched.

    Called as ``t(image)`` or ``t(image, mask)`` on a ``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask``.

    Args:
        size: the shorter side of the resized image; None: full resolution.
        mean: normalization mean.
        std: normalization std.
        interpolation: the images' interpolation.
    """

    def __init__(
        self,
        size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
    ) -> None:
        super().__init__()
        steps: list[v2.Transform] = [] if size is None else [v2.Resize(size, interpolation=interpolation, antialias=True)]
        self.image = v2.Compose(steps + _to_model_input(mean, std))

    def forward(self, image: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        image = self.image(image)
        return image if mask is None else (image, mask)


def segmentation_eval_transform(
    size: int | None, mean: Sequence[float], std: Sequence[float], interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR
) -> SegmentationEvalTransform:
    """See :class:`SegmentationEvalTransform`."""
    return SegmentationEvalTransform(size, mean, std, interpolation)


def _pad_to(tensors: list[Tensor], value: float) -> Tensor:
    """Stack tensors ``(..., h, w)`` padded at the bottom and right to the largest height and width."""
    height, width = max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors)
    return torch.stack([nnf.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors])


class PadCollate:
    """Batch samples of any size: images padded with 0, masks with ``ignore_index``, at the bottom and right.

    The batch gains ``input_size`` and ``mask_size`` (``(N, 2)`` each, before padding), so the module crops
    each image's logits back and scores them at the size of its own mask; the padding is never scored.

    Args:
        ignore_index: the value of padded mask pixels; None (every pixel labelled) pads masks with -1.
    """

    def __init__(self, ignore_index: int | None = 255) -> None:
        self.ignore_index = -1 if ignore_index is None else ignore_index

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        padded = {keys.IMAGE: [sample.pop(keys.IMAGE) for sample in batch]}
        if keys.TARGET in batch[0]:
            padded[keys.TARGET] = [sample.pop(keys.TARGET) for sample in batch]
        out = default_collate(batch)
        out[keys.INPUT_SIZE] = torch.tensor([tuple(t.shape[-2:]) for t in padded[keys.IMAGE]], dtype=torch.long)
        out[keys.IMAGE] = _pad_to(padded[keys.IMAGE], 0.0)
        if keys.TARGET in padded:
            out[keys.MASK_SIZE] = torch.tensor([tuple(t.shape[-2:]) for t in padded[keys.TARGET]], dtype=torch.long)
            out[keys.TARGET] = _pad_to(padded[keys.TARGET], self.ignore_index)
        return out

"""Test-time augmentation: several views of each image, their probabilities averaged.

``hflip`` adds the mirrored image; ``five_crop`` takes the four corner crops and the centre crop
(each ``crop_fraction`` of the image side, resized back to the input size so that any network takes
them); ``ten_crop`` adds the mirrored five crops. The views go through the network one at a time, each a
batch of ``N`` images (the evaluation batch), so test-time augmentation needs no more memory than
evaluation without it. torchvision's ``five_crop``/``ten_crop`` make the crops; the averaging over views is
written here because torchvision and torchmetrics have none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from lit_finetune.tasks import Task

TTAMode = Literal["none", "hflip", "five_crop", "ten_crop"]
TTA_VIEWS = {"none": 1, "hflip": 2, "five_crop": 5, "ten_crop": 10}
"""Number of views each mode makes of an image."""


def check_tta(mode: str, crop_fraction: float) -> None:
    """Raise ``ValueError`` for an unknown mode or a crop fraction outside ``(0, 1]``."""
    if mode not in TTA_VIEWS:
        raise ValueError(f"Unknown tta mode {mode!r}: choose one of {sorted(TTA_VIEWS)}.")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"`tta_crop_fraction` must be in (0, 1], got {crop_fraction}.")


def iter_tta_views(images: Tensor, mode: TTAMode, crop_fraction: float = 0.875) -> Iterator[Tensor]:
    """The views of a batch ``(N, C, H, W)``, one ``(N, C, H, W)`` batch per view, made as they are needed.

    Args:
        images: a normalized batch.
        mode: ``"none"``, ``"hflip"``, ``"five_crop"`` or ``"ten_crop"``.
        crop_fraction: side of the crops relative to the image side (``five_crop``/``ten_crop``).

    Raises:
        ValueError: an unknown mode or a crop fraction outside ``(0, 1]``.
    """
    check_tta(mode, crop_fraction)
    if mode in ("none", "hflip"):
        yield images
        if mode == "hflip":
            yield F.horizontal_flip(images)
        return
    height, width = images.shape[-2:]
    size = [max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction))]
    crops = F.five_crop(images, size) if mode == "five_crop" else F.ten_crop(images, size)
    for crop in crops:
        yield F.resize(crop, [height, width], antialias=True)


def tta_views(images: Tensor, mode: TTAMode, crop_fraction: float = 0.875) -> Tensor:
    """The views of a batch ``(N, C, H, W)`` stacked view-major: ``(views * N, C, H, W)``.

    Args:
        images: a normalized batch.
        mode: ``"none"``, ``"hflip"``, ``"five_crop"`` or ``"ten_crop"``.
        crop_fraction: side of the crops relative to the image side (``five_crop``/``ten_crop``).

    Raises:
        ValueError: an unknown mode or a crop fraction outside ``(0, 1]``.

    Example::

        tta_views(torch.randn(4, 3, 64, 64), "ten_crop").shape  # (40, 3, 64, 64)
    """
    return torch.cat(list(iter_tta_views(images, mode, crop_fraction)))


def average_view_probs(task: Task, logits: Tensor, views: int) -> Tensor:
    """Mean over views of the task's probabilities of view-major ``logits`` (``(views * N, K)``), shape ``(N, ...)``."""
    probs = task.predict(logits).probs
    return probs.reshape(views, -1, *probs.shape[1:]).mean(dim=0)


def tta_logits(task: Task, forward: Callable[[Tensor], Tensor], images: Tensor, mode: TTAMode, crop_fraction: float = 0.875) -> Tensor:
    """Logits of ``images`` under test-time augmentation: the task's logits of the view-averaged probabilities.

    Multiclass: ``log(mean softmax)``; multilabel and binary: ``logit(mean sigmoid)``; probabilities are
    clamped to ``[1e-7, 1 - 1e-7]`` first. ``task.predict`` of the result gives the averaged probabilities,
    and a loss on logits evaluated on it scores them (cross-entropy: the NLL of the averaged probabilities).
    ``forward`` sees one view at a time: batches of ``N`` images, never ``views * N``.

    Args:
        task: the task that turns logits into probabilities and back.
        forward: maps a batch of images to logits.
        images: a normalized batch ``(N, C, H, W)``.
        mode: the views (see :func:`tta_views`); ``"none"`` returns ``forward(images)`` unchanged.
        crop_fraction: crop side relative to the image side.
    """
    if mode == "none":
        return forward(images)
    total: Tensor | None = None
    for view in iter_tta_views(images, mode, crop_fraction):
        probs = task.predict(forward(view)).probs
        total = probs if total is None else total + probs
    assert total is not None
    return task.logits_from_probs(total / TTA_VIEWS[mode])

"""Mask pictures for the segmentation callbacks: class masks coloured by a palette and blended over images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_finetune.images.palette import default_palette

IGNORE_GRAY = 0.5
"""Unlabeled pixels are drawn in this neutral gray (the image shows through at the blend's weight)."""


def shrink_masks(masks: Tensor, size: int) -> Tensor:
    """Masks ``(N, H, W)`` resized (nearest) so that the longer side is at most ``size``; class values are kept."""
    h, w = masks.shape[-2:]
    if max(h, w) <= size:
        return masks
    scale = size / max(h, w)
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(masks[:, None].float(), size=out, mode="nearest")[:, 0].to(masks.dtype)


def color_masks(masks: Tensor, palette: Sequence[Sequence[int]] | None, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """RGB pictures ``(N, 3, H, W)`` in ``[0, 1]`` of class masks, and where the pixels are labeled ``(N, 1, H, W)``."""
    masks = masks.long().cpu()
    # `masks != None` is a Tensor too (mypy reads a bool)
    top = int(masks[masks != ignore_index].max()) + 1 if bool((masks != ignore_index).any()) else 1  # type: ignore[attr-defined]
    colors = list(palette) if palette else default_palette(max(top, 2))
    if len(colors) < top:
        colors = colors + default_palette(top)[len(colors) :]
    table = torch.tensor(colors, dtype=torch.float32)[:, :3] / 255
    labeled = (masks >= 0) & (masks < len(table))
    if ignore_index is not None:
        labeled &= masks != ignore_index
    rgb = table[torch.where(labeled, masks, 0)].permute(0, 3, 1, 2)
    rgb = torch.where(labeled[:, None], rgb, torch.full_like(rgb, IGNORE_GRAY))
    return rgb, labeled[:, None]


def overlay_masks(
    images: Tensor, masks: Tensor, palette: Sequence[Sequence[int]] | None, ignore_index: int | None, alpha: float = 0.5
) -> Tensor:
    """Blend the coloured ``masks`` ``(N, H, W)`` over ``images`` ``(N, 3, H, W)`` in ``[0, 1]`` (masks resized to the images)."""
    if masks.shape[-2:] != images.shape[-2:]:
        masks = F.interpolate(masks[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0].long()
    rgb, _ = color_masks(masks, palette, ignore_index)
    return (1 - alpha) * images.float().cpu() + alpha * rgb

"""Picture helpers shared by the diagnostics callbacks: de-normalizing, tiling and labelling images.

Everything here works on small tensors (a handful of thumbnails) and returns float images in
``[0, 1]``, shaped ``(N, 3, H, W)`` or ``(3, H, W)`` for a grid, as TensorBoard's ``add_image`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

LINE_HEIGHT = 11
"""Pixel height of one caption line (PIL's default bitmap font)."""


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)``: ``(N, 3, H, W)`` normalized images to float ``[0, 1]``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() * std_t + mean_t).clamp(0, 1)


def fit_size(images: Tensor, size: int) -> Tensor:
    """Resize ``(N, C, H, W)`` images so that the longer side is ``size`` (nearest when enlarging)."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    if scale == 1:
        return images
    out_size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if scale > 1:
        return F.interpolate(images.float(), size=out_size, mode="nearest")
    return F.interpolate(images.float(), size=out_size, mode="bilinear", antialias=True, align_corners=False)


def caption_tiles(images: Tensor, captions: Sequence[Sequence[str]], max_chars: int | None = None) -> Tensor:
    """Add a white band with ``captions`` (one list of lines per image) under each image in ``[0, 1]``."""
    n, _, h, w = images.shape
    lines = max((len(c) for c in captions), default=0)
    max_chars = max_chars or max(4, w // 6)
    font = ImageFont.load_default()
    band = torch.ones(n, 3, lines * LINE_HEIGHT + 2, w)
    for i, caption in enumerate(captions):
        canvas = Image.new("RGB", (w, band.shape[2]), "white")
        draw = ImageDraw.Draw(canvas)
        for j, text in enumerate(caption):
            draw.text((1, 1 + j * LINE_HEIGHT), text[:max_chars], fill="black", font=font)
        band[i] = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255
    return torch.cat([images.detach().float().cpu(), band], dim=2)


def tile_grid(tiles: Tensor, ncol: int = 8) -> Tensor:
    """Arrange ``(N, 3, H, W)`` tiles in a grid with ``ncol`` columns and a 2-pixel gray border."""
    return make_grid(tiles, nrow=min(ncol, max(1, len(tiles))), padding=2, pad_value=0.5)


def colorize(heatmaps: Tensor, cmap: str = "jet") -> Tensor:
    """Map ``(N, 1, H, W)`` values in ``[0, 1]`` to RGB ``(N, 3, H, W)`` with a matplotlib colormap."""
    import matplotlib

    table = torch.tensor(matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3], dtype=torch.float32)
    idx = (heatmaps.detach().float().cpu().clamp(0, 1) * 255).round().long().squeeze(1)
    return table[idx].permute(0, 3, 1, 2)

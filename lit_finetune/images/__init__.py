"""Image helpers shared by the data and the callbacks: reading files as RGB, colouring class masks."""

from lit_finetune.images.palette import default_palette, palette_image, read_palette
from lit_finetune.images.read import load_rgb, to_rgb

__all__ = ["default_palette", "load_rgb", "palette_image", "read_palette", "to_rgb"]

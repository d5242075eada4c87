"""Decoding encoded image bytes (from shards) to RGB, with PIL or with ``torchvision.io``.

``torchvision.io.decode_jpeg`` decodes JPEGs straight into a uint8 ``(3, H, W)`` tensor with libjpeg-turbo; the
transforms v2 pipelines take that tensor as they take a PIL image. Other formats, and bytes it cannot decode, go
through PIL (:func:`lit_finetune.images.read.load_rgb`: every mode converted to 8-bit RGB, EXIF orientation applied).
``benchmarks/data_throughput.py`` measures both; docs/scaling.md gives the figures: ``decode_jpeg`` is the faster one,
from shards and from loose files, and :func:`read_image` (the folder data sets' loader) uses it.
"""

from __future__ import annotations

import io
from typing import Literal

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg

from lit_finetune.images.read import load_rgb

Decoder = Literal["pil", "torchvision"]
DECODERS: tuple[str, ...] = ("pil", "torchvision")
JPEG_MAGIC = b"\xff\xd8\xff"


def decode_pil(data: bytes) -> Image.Image:
    """Encoded bytes as an 8-bit RGB PIL image, EXIF orientation applied."""
    return load_rgb(io.BytesIO(data))  # type: ignore[arg-type]  # PIL opens file objects as it opens paths


def decode_torchvision(data: bytes) -> tv_tensors.Image | Image.Image:
    """JPEG bytes as a uint8 ``(3, H, W)`` ``tv_tensors.Image`` (``torchvision.io.decode_jpeg``, EXIF orientation
    applied); other formats, or JPEGs libjpeg refuses (CMYK, damaged), through PIL."""
    if not data.startswith(JPEG_MAGIC):
        return decode_pil(data)
    try:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return tv_tensors.Image(decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True))
    except RuntimeError:
        return decode_pil(data)


def read_image(path: str) -> tv_tensors.Image | Image.Image:
    """An image file in 8-bit RGB, decoded as :func:`decode_torchvision` decodes bytes (JPEGs with
    ``torchvision.io.decode_jpeg``, other formats with PIL): the loader of the folder and CSV data sets."""
    with open(path, "rb") as file:
        return decode_torchvision(file.read())


def image_decoder(name: str):
    """The decoding function named ``name`` (``"pil"`` or ``"torchvision"``).

    Raises:
        ValueError: an unknown name.
    """
    if name == "pil":
        return decode_pil
    if name == "torchvision":
        return decode_torchvision
    raise ValueError(f"Unknown image decoder '{name}'; choose one of {', '.join(DECODERS)}.")

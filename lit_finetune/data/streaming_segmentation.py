"""``StreamingSegmentationDataModule``: image+mask shards (``lit-finetune optimize`` of a segmentation data set) streamed.

The same joint image/mask transforms, dict samples (``original_size`` included) and padded batches of mixed sizes
as ``SegmentationDataModule``; classes, task, ``ignore_index``, palette and pixel counts come from the shards'
metadata. Shuffling, DDP, resume: see :mod:`lit_finetune.data.streaming`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.data.decode import Decoder, image_decoder
from lit_finetune.data.segmentation import SegmentationDataset
from lit_finetune.data.segmentation_transforms import PadCollate, segmentation_eval_transform, segmentation_train_transform
from lit_finetune.data.streaming import ShardDataModule
from lit_finetune.models.preprocessing import configured_preprocessing


class DecodeSegmentation:
    """A LitData ``transform``: an image+mask shard sample to ``{image, target, index, path, original_size}``.

    Args:
        transform: called as ``transform(image, mask)`` on a ``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask``.
        decoder: ``"pil"`` or ``"torchvision"``.
    """

    def __init__(self, transform: Callable | None, decoder: str = "torchvision") -> None:
        self.transform = transform
        self.decode = image_decoder(decoder)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image = self.decode(bytes(item["image"]))
        image = image if isinstance(image, torch.Tensor) else tv_tensors.Image(F.pil_to_tensor(image))
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(Image.open(io.BytesIO(bytes(item["mask"])))).astype(np.int64)))
        size = tuple(image.shape[-2:])
        if tuple(mask.shape) != size:
            raise ValueError(
                f"Shard sample '{bytes(item['path']).decode('utf-8')}': mask {tuple(mask.shape)} and image {size} differ; re-run `lit-finetune optimize`."
            )
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {
            keys.IMAGE: image.as_subclass(torch.Tensor),
            keys.TARGET: mask.as_subclass(torch.Tensor).long(),
            keys.INDEX: int(item["index"]),
            keys.PATH: bytes(item["path"]).decode("utf-8"),
            keys.ORIGINAL_SIZE: torch.tensor(size, dtype=torch.long),
        }


class StreamingSegmentationDataModule(ShardDataModule):
    """Segmentation shards streamed from a folder or a bucket, as ``SegmentationDataModule`` serves folders.

    Args:
        input_dir: the ``--output`` of ``lit-finetune optimize``: a local folder or ``s3://bucket/prefix``.
        batch_size: samples per training batch (per process under DDP).
        eval_batch_size: samples per validation/test/predict batch; None: ``batch_size``.
        num_workers: loader worker processes.
        pin_memory: page-locked host memory; None: only when CUDA is available.
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        seed: seed of the per-epoch shuffling of the training stream.
        cache_dir: where downloaded chunks are kept; None: LitData's default cache folder.
        storage_options: options of the object store's client (S3: keyword arguments of ``boto3.client``).
        decoder: ``"torchvision"`` (JPEGs with ``torchvision.io.decode_jpeg``) or ``"pil"``.
        task: must match the shards' task (linked from the model by the CLI); None: the shards' task.
        backbone: model or encoder name, for the default normalization and size (linked from the model).
        weights: weights name; its ``transforms()`` give the default normalization and size.
        image_size: side of the square training crops; None: from the weights.
        eval_size: side that evaluation images and masks are resized to; ``"image_size"``: the same; None: full resolution.
        mean: normalization mean; None: from the weights.
        std: normalization std; None: likewise.
        train_crop: ``"resized"`` (random resized crops) or ``"crop"`` (crops at the image's own scale, padded).
        crop_scale: area range of the resized crops.
        crop_ratio: aspect range of the resized crops.
        hflip: random horizontal flips in training.
        vflip: random vertical flips in training.
        train_augment: False trains on the evaluation pipeline.
        predict_root: folder of loose images to predict; None: the validation stream.

    Raises:
        FileNotFoundError: no shards at ``input_dir``.
        ValueError: classification shards, a task that does not match, bad options.

    Example::

        dm = StreamingSegmentationDataModule("s3://my-bucket/digits_seg", image_size=64, batch_size=16)
        dm.num_classes, dm.palette[:2]
    """

    KIND = "segmentation"

    def __init__(
        self,
        input_dir: str,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        seed: int = 42,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        decoder: Decoder = "torchvision",
        task: Literal["multiclass", "binary"] | None = None,
        backbone: str | None = None,
        weights: str | None = None,
        image_size: int | None = None,
        eval_size: int | Literal["image_size"] | None = "image_size",
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        train_crop: Literal["resized", "crop"] = "resized",
        crop_scale: tuple[float, float] = (0.25, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        vflip: bool = False,
        train_augment: bool = True,
        predict_root: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"`batch_size` and `eval_batch_size` must be >= 1, got {batch_size} and {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        self.save_hyperparameters()
        self._set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self._check_predict_root()
        self.eval_batch_size = eval_batch_size or batch_size
        self._read_shards(input_dir, task, cache_dir, storage_options, seed, decoder)
        self.ignore_index = int(self.metadata.get("ignore_index", 255))
        self.positive_value = 1  # the shards hold the training targets: binary masks are 0/1 already
        self.palette = [tuple(c) for c in self.metadata.get("palette", [])] or None
        self.preprocessing = pre = configured_preprocessing(backbone, weights, image_size, None, mean, std, square=True)
        size = pre.crop_size
        self.eval_size = size if eval_size == "image_size" else eval_size
        self.eval_transform = segmentation_eval_transform(
            self.eval_size, self.preprocessing.mean, self.preprocessing.std, pre.interpolation
        )
        if train_augment:
            self.train_transform = segmentation_train_transform(
                size,
                self.preprocessing.mean,
                self.preprocessing.std,
                train_crop,
                crop_scale,
                crop_ratio,
                hflip,
                vflip,
                self.ignore_index,
                pre.interpolation,
            )
        else:
            self.train_transform = self.eval_transform

    @override
    def _decoder(self, transform: Callable | None) -> Callable:
        return DecodeSegmentation(transform, self.decoder)

    @override
    def _dataset(self, items: Sequence, transform: Callable) -> Dataset:
        return SegmentationDataset(items, transform)

    @override
    def _predict_items(self, images: list[Path]) -> list[tuple[str, None]]:
        if not images:
            raise ValueError(f"No images under `predict_root` '{self.predict_root}'.")
        return [(str(p), None) for p in images]

    @override
    def _collate(self, train: bool) -> Callable:
        return PadCollate(self.ignore_index)

    @override
    def _eval_batch_size(self) -> int:
        return self.eval_batch_size

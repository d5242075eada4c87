"""Streaming data modules: the shards ``lit-finetune optimize`` wrote, read from a folder or a bucket with LitData.

``StreamingDataModule`` (classification) and ``StreamingSegmentationDataModule`` read ``<input_dir>/train``,
``val`` and ``test`` with ``litdata.StreamingDataset`` and ``StreamingDataLoader``: chunks are downloaded as they
are needed (``s3://``, ``gs://``, ``r2://``, or a local folder), samples are decoded and transformed in the loader
workers with the same transforms as the folder data modules, and come out as the same dict samples. Class names,
the task, class counts and (segmentation) palette come from the shards' ``lit_finetune.json``; a model task that
does not match the shards is an error before training.

What LitData does, and what that means here:

- Training: shuffled (chunk order and items within chunks) with ``seed`` and the epoch, anew each epoch. Under DDP
  every sample goes to one process; LitData drops the last samples that would leave processes with unequal
  numbers of batches (at most ``world_size * num_workers * batch_size`` of them per epoch), as DDP needs.
- Validation and test: in order, each sample to exactly one process (no padding, no repeats; processes may get
  unequal numbers), so metrics under DDP equal a one-process run's.
- Mid-epoch resume: ``StreamingDataLoader`` is stateful; Lightning saves its state in every checkpoint (also
  ``last-interrupted.ckpt`` on SIGTERM) and restores it on ``--ckpt_path``, so a resumed run reads only the
  samples the interrupted epoch had not yet seen. The data module's own state names the shards and the seed,
  and a checkpoint of other shards is refused.
- Not available over a stream: the balanced sampler (it draws sample indices with replacement from the whole
  set; a stream reads chunks in order). Weight the loss instead (``model.class_weights: auto``, from the class
  counts in the metadata). ``val_fraction``/``split_seed``/``train_fraction`` are fixed when the shards are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.data import transforms as tfm
from lit_finetune.data.base import FolderDataModule
from lit_finetune.data.decode import Decoder, image_decoder
from lit_finetune.data.folder import ImageDataset
from lit_finetune.data.mixing import BatchMixer, MixingCollate
from lit_finetune.data.shards import SPLITS, read_metadata
from lit_finetune.data.storage import allow_plain_http, join
from lit_finetune.data.transforms import Augment
from lit_finetune.models.preprocessing import configured_preprocessing


class DecodeClassification:
    """A LitData ``transform``: a shard sample to ``{image, target, index, path}``, as ``ImageDataset`` returns.

    Args:
        transform: the image pipeline (transforms v2), applied to the decoded image.
        decoder: ``"pil"`` or ``"torchvision"`` (see :mod:`lit_finetune.data.decode`).
    """

    def __init__(self, transform: Callable | None, decoder: str = "torchvision") -> None:
        self.transform = transform
        self.decode = image_decoder(decoder)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image = self.decode(bytes(item["image"]))
        if self.transform is not None:
            image = self.transform(image)
        target = item["target"]
        target = int(target) if isinstance(target, int) else torch.as_tensor(target, dtype=torch.float32)
        return {keys.IMAGE: image, keys.TARGET: target, keys.INDEX: int(item["index"]), keys.PATH: bytes(item["path"]).decode("utf-8")}


class ShardDataModule(FolderDataModule):
    """What the streaming data modules share: the metadata, the streamed splits, LitData's loaders, resume checks.

    A subclass sets the transforms and implements :meth:`_decoder` (a shard sample to a dict sample),
    :meth:`_dataset` and :meth:`_predict_items` (loose image files for ``predict_root``).
    """

    KIND = ""
    """The ``kind`` of shards the module reads (``lit_finetune.json``)."""

    train_set: StreamingDataset | None
    val_set: StreamingDataset | None
    test_set: StreamingDataset | None

    def _read_shards(
        self, input_dir: str, task: str | None, cache_dir: str | None, storage_options: dict[str, Any] | None, seed: int, decoder: str
    ) -> None:
        """Read and check the metadata (kind, task) and keep the streaming options.

        Raises:
            FileNotFoundError: no shards at ``input_dir``.
            ValueError: shards of another kind, or of another task than ``task``.
        """
        image_decoder(decoder)  # an unknown name fails here, not in a loader worker
        self.input_dir, self.cache_dir, self.storage_options, self.seed, self.decoder = input_dir, cache_dir, storage_options, seed, decoder
        self.root = Path(input_dir)  # what FolderDataModule's messages name
        self.metadata = read_metadata(input_dir, storage_options)
        kind = self.metadata.get("kind")
        if kind != self.KIND:
            raise ValueError(f"'{input_dir}' holds {kind} shards; {type(self).__name__} reads {self.KIND} shards.")
        stored = self.metadata.get("task")
        if task is not None and stored is not None and task != stored:
            raise ValueError(
                f"The shards at '{input_dir}' were written for task '{stored}', but the task is '{task}': set `model.task: {stored}` (or re-run `optimize` with that task)."
            )
        self.task = stored or task
        self.class_names = list(self.metadata["class_names"])

    @property
    def class_counts(self) -> list[int] | None:
        """Training label counts, as the source data module counted them when the shards were written."""
        return self.metadata.get("class_counts")

    @property
    def num_train_samples(self) -> int:
        """Number of training samples in the shards."""
        return int(self.metadata.get("num_train_samples", 0))

    def _decoder(self, transform: Callable | None) -> Callable:
        """The LitData ``transform`` that turns a shard sample into a dict sample through ``transform``."""
        raise NotImplementedError

    def _stream(self, split: str, transform: Callable | None, shuffle: bool) -> StreamingDataset | None:
        """The split as a ``StreamingDataset`` (None when the shards have no such split)."""
        if not self.metadata["splits"].get(split):
            return None
        return StreamingDataset(
            join(self.input_dir, split),
            cache_dir=join(self.cache_dir, split) if self.cache_dir else None,
            shuffle=shuffle,
            seed=self.seed,
            storage_options=self.storage_options,
            transform=self._decoder(transform),
            # Evaluation: every sample once, processes may get unequal numbers. Training: LitData's default
            # (equal numbers under DDP).
            drop_last=None if shuffle else False,
        )

    @override
    def _splits(self) -> tuple[Sequence, Sequence, Sequence]:
        return tuple(join(self.input_dir, split) for split in SPLITS if self.metadata["splits"].get(split))  # type: ignore[return-value]

    @override
    def setup(self, stage: str) -> None:
        """Open the splits that ``stage`` uses (after the process group exists: LitData assigns samples to ranks then).

        Raises:
            FileNotFoundError: ``stage`` is ``"test"`` and the shards have no test split.
        """
        allow_plain_http(self.storage_options)
        if stage == "fit":
            self.train_set = self._stream("train", self.train_transform, shuffle=True)
        if stage in ("fit", "validate") or (stage == "predict" and self.predict_root is None):
            self.val_set = self._stream("val", self.eval_transform, shuffle=False)
        if stage == "test":
            self.test_set = self._stream("test", self.eval_transform, shuffle=False)
            if self.test_set is None:
                raise FileNotFoundError(
                    f"The shards at '{self.input_dir}' have no test split: write one with `lit-finetune optimize` from data with a test split."
                )
        if stage == "predict":
            if self.predict_root is not None:
                from lit_finetune.data.folder import list_images

                self.predict_set = self._dataset(self._predict_items(list_images(self.predict_root)), self.eval_transform)
            else:
                self.predict_set = self.val_set

    def _stream_loader(self, dataset: StreamingDataset, batch_size: int, collate_fn: Callable | None) -> StreamingDataLoader:
        workers = self._workers()
        return StreamingDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate_fn,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches streamed from the shards (stateful: resumable mid-epoch)."""
        return self._stream_loader(self.train_set, self.batch_size, self._collate(train=True))

    @override
    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        if isinstance(dataset, StreamingDataset):
            return self._stream_loader(dataset, self._eval_batch_size(), self._collate(train=False))
        return super()._eval_loader(dataset)  # loose files of predict_root

    @override
    def state_dict(self) -> dict[str, Any]:
        """What identifies the stream (saved in checkpoints; the loader's position is saved by Lightning's fit loop)."""
        return {"input_dir": self.input_dir, "seed": self.seed, "splits": dict(self.metadata["splits"])}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint of another stream: its saved position would point at other samples.

        Raises:
            ValueError: the checkpoint streamed shards of other sizes or another seed.
        """
        if not state_dict:
            return
        mine = self.state_dict()
        changed = [key for key in ("seed", "splits") if state_dict.get(key) != mine[key]]
        if changed:
            raise ValueError(
                f"The checkpoint streamed '{state_dict.get('input_dir')}' with {', '.join(f'{k}={state_dict.get(k)}' for k in changed)}; "
                f"this run streams '{self.input_dir}' with {', '.join(f'{k}={mine[k]}' for k in changed)}. Resume with the same shards and seed."
            )


class StreamingDataModule(ShardDataModule):
    """Classification shards (written by ``lit-finetune optimize``) streamed from a folder or a bucket.

    The same transforms, dict samples, mixing and task checks as ``ImageFolderDataModule``; see the module
    docstring for shuffling, DDP, resume and what a stream cannot do (a balanced sampler).

    Args:
        input_dir: the ``--output`` of ``lit-finetune optimize``: a local folder or ``s3://bucket/prefix``.
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes, or ``"auto"`` (the CPUs shared among the machine's training processes).
        pin_memory: page-locked host memory; None: only when CUDA is available.
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        seed: seed of the per-epoch shuffling of the training stream.
        cache_dir: where downloaded chunks are kept; None: LitData's default cache folder.
        storage_options: options of the object store's client (S3: keyword arguments of ``boto3.client``,
            ``endpoint_url``, ``aws_access_key_id``, ...); None: the ``AWS_*`` environment variables.
        decoder: ``"torchvision"`` (``torchvision.io.decode_jpeg`` for JPEGs, PIL for other formats) or ``"pil"``.
        task: must match the shards' task (linked from ``model.task`` by the CLI); None: the shards' task.
        backbone: model name, for default sizes (linked from ``model.backbone``).
        weights: weights name; its ``transforms()`` give the default sizes and normalization.
        image_size: crop size; None: from the weights.
        resize_size: short side before the center crop at evaluation; None: ``image_size * 256 / 224``.
        mean: normalization mean; None: from the weights.
        std: normalization std; None: from the weights.
        crop_scale: area range of ``RandomResizedCrop`` in training.
        hflip: random horizontal flips in training.
        train_augment: False trains on the evaluation pipeline.
        augment: the training augmentation preset (see ``ImageFolderDataModule``).
        random_erasing: probability of ``RandomErasing`` on each training image.
        mixup_alpha: MixUp of training batches; 0: off.
        cutmix_alpha: CutMix of training batches; 0: off.
        predict_root: folder of loose images to predict; None: the validation stream.

    Raises:
        FileNotFoundError: no shards at ``input_dir``.
        ValueError: shards of segmentation, a task that does not match, bad options.

    Example::

        dm = StreamingDataModule("s3://my-bucket/digits", image_size=32, resize_size=32, batch_size=64)
        dm.class_names  # from the shards' metadata
    """

    KIND = "classification"

    def __init__(
        self,
        input_dir: str,
        batch_size: int = 32,
        num_workers: int | Literal["auto"] = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        seed: int = 42,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        decoder: Decoder = "torchvision",
        task: Literal["multiclass", "multilabel", "binary"] | None = None,
        backbone: str | None = None,
        weights: str | None = None,
        image_size: int | None = None,
        resize_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: bool = True,
        train_augment: bool = True,
        augment: Augment = "basic",
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        predict_root: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"`num_workers` must be an int >= 0 or 'auto', got {num_workers!r}.")
        self.save_hyperparameters()
        self._set_loader_options(batch_size, num_workers, pin_memory, persistent_workers, predict_root)
        self._check_predict_root()
        self._read_shards(input_dir, task, cache_dir, storage_options, seed, decoder)
        self.preprocessing = configured_preprocessing(backbone, weights, image_size, resize_size, mean, std)
        self.eval_transform = tfm.eval_transform(self.preprocessing)
        if train_augment:
            self.train_transform = tfm.train_transform(self.preprocessing, crop_scale, hflip, augment, random_erasing)
        elif augment not in ("basic", "none") or random_erasing > 0 or mixup_alpha or cutmix_alpha:
            raise ValueError(
                "`train_augment: false` trains on the evaluation pipeline: it cannot take an `augment` preset, `random_erasing` or mixing."
            )
        else:
            self.train_transform = self.eval_transform
        mixing = mixup_alpha > 0 or cutmix_alpha > 0
        self.mixer = BatchMixer(mixup_alpha, cutmix_alpha, self.num_classes, self.task) if mixing else None  # type: ignore[arg-type]

    @override
    def _decoder(self, transform: Callable | None) -> Callable:
        return DecodeClassification(transform, self.decoder)

    @override
    def _dataset(self, items: Sequence, transform: Callable) -> Dataset:
        return ImageDataset(items, transform)

    @override
    def _predict_items(self, images: list[Path]) -> list[tuple[str, int]]:
        return [(str(p), -1) for p in images]

    @override
    def _collate(self, train: bool) -> Callable | None:
        return MixingCollate(self.mixer) if train and self.mixer is not None else None

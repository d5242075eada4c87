"""Tiny image folders, models and trainers shared by the callback tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.module import FinetuneClassifier

CLASSES = ("circle", "square", "stripes")


def make_image_folder(root: Path, per_class: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Write ``train/`` and ``val/`` class folders of small PNGs with a class-dependent pattern plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    patterns = {
        "circle": ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2),
        "square": (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4),
        "stripes": (xx // 4) % 2 == 0,
    }
    for split, count in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
                img[patterns[name]] = (200, 60 + 60 * c, 80)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), {"train": 8, "val": 4})


def make_datamodule(root: Path, batch_size: int = 8) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(root), batch_size=batch_size, num_workers=0, backbone="resnet18", image_size=32, resize_size=32, crop_scale=(0.8, 1.0), hflip=False
    )


def make_model(**kwargs) -> FinetuneClassifier:
    torch.manual_seed(0)
    args = dict(num_classes=3, backbone="resnet18", class_names=list(CLASSES), optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    args.update(kwargs)
    return FinetuneClassifier(**args)


def make_trainer(tmp_path: Path, callbacks: list, **kwargs) -> Trainer:
    args = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb", default_hp_metric=False),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    args.update(kwargs)
    return Trainer(**args)


def read_events(trainer: Trainer) -> EventAccumulator:
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def text_of(acc: EventAccumulator, tag: str) -> list[str]:
    """The strings written with ``add_text(tag, ...)``, in step order."""
    return [event.tensor_proto.string_val[0].decode() for event in acc.Tensors(f"{tag}/text_summary")]


def decode_image(event) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))

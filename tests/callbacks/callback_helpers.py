"""Tiny image folders, models, trainers and read-back helpers shared by the callback tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_finetune import keys
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.modules.classifier import FinetuneClassifier

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
        str(root),
        batch_size=batch_size,
        num_workers=0,
        backbone="resnet18",
        image_size=32,
        resize_size=32,
        crop_scale=(0.8, 1.0),
        hflip=False,
    )


def make_model(**kwargs) -> FinetuneClassifier:
    torch.manual_seed(0)
    optimizer = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)
    args = dict(num_classes=3, backbone="resnet18", class_names=list(CLASSES), optimizer=optimizer)
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


class StepRecorder(Callback):
    """Records, on every optimizer step, the gradients, the weights before and after, and Lightning's grad_norm."""

    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps[trainer.global_step] = {
            "grads": {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None},
            "before": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
            "grad_norm": grad_norm(pl_module, 2)["grad_2.0_norm_total"].item(),
        }
        self._current = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[self._current]["after"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


class StateProbe(Callback):
    """Snapshot of training flags, requires_grad and .grad at validation epoch end (``mix``: make flags and grads uneven first)."""

    def __init__(self, mix: bool) -> None:
        self.mix = mix
        self.snapshots: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.mix:
            pl_module.head.train()  # uneven flags: GradCAM must restore exactly these
            pl_module.backbone.layer1.train()
            for i, p in enumerate(pl_module.parameters()):  # gradients GradCAM must not touch (or create)
                p.grad = torch.randn_like(p) if i % 2 else None
        self.snapshots.append(
            {
                "training": {n: m.training for n, m in pl_module.named_modules()},
                "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
                "grads": {n: None if p.grad is None else p.grad.detach().clone() for n, p in pl_module.named_parameters()},
                "params": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
            }
        )


@dataclass
class FullRun:
    trainer: Trainer
    model: FinetuneClassifier
    datamodule: ImageFolderDataModule
    callbacks: dict[str, Callback]
    events: EventAccumulator


@pytest.fixture(scope="session")
def full_run(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> FullRun:
    """One short fit (1 epoch, 3 training and 2 validation batches) with every diagnostics callback on."""
    from lit_finetune.callbacks.best_worst import BestWorstSamples
    from lit_finetune.callbacks.classification_report import ValidationReport
    from lit_finetune.callbacks.data_timing import DataTiming
    from lit_finetune.callbacks.gradcam import GradCAM
    from lit_finetune.callbacks.gradient_stats import GradientStats
    from lit_finetune.callbacks.hparams import HParamsSummary
    from lit_finetune.callbacks.nan_guard import NanGuard

    callbacks = {
        "best_worst": BestWorstSamples(k=3, tile_size=32),
        "gradient_stats": GradientStats(histogram_every_n_steps=2),
        "nan_guard": NanGuard(),
        "report": ValidationReport(num_thresholds=11),
        "timing": DataTiming(every_n_steps=1),
        "hparams": HParamsSummary(),
        "recorder": StepRecorder(),
        "probe_before": StateProbe(mix=True),
        "gradcam": GradCAM(num_images=4, tile_size=32),
        "probe_after": StateProbe(mix=False),
    }
    model = make_model(optimizer=functools.partial(torch.optim.SGD, lr=1e-3))
    datamodule = make_datamodule(image_root)
    trainer = make_trainer(tmp_path_factory.mktemp("full_run"), list(callbacks.values()))
    trainer.fit(model, datamodule=datamodule)
    return FullRun(trainer, model, datamodule, callbacks, read_events(trainer))


@torch.no_grad()
def val_losses(run: FullRun) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Brute force: per-sample loss, logits and targets of the whole validation set with the final weights."""
    model = run.model.eval()
    samples = [run.datamodule.val_set[i] for i in range(len(run.datamodule.val_set))]
    images = torch.stack([s[keys.IMAGE] for s in samples])
    targets = torch.tensor([int(s[keys.TARGET]) for s in samples])
    logits = model(images)[keys.LOGITS]
    return model.sample_losses({keys.LOGITS: logits}, targets), logits, targets

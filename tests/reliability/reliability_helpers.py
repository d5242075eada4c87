"""Tiny data, configs and test-only callbacks shared by the reliability tests (also imported by subprocesses)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
HELPERS_DIR = Path(__file__).resolve().parent


def write_images(root: Path, classes=("a", "b", "c"), per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """PNG class folders under ``root``; each class has its own colour plus noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[c % 3] = 180
        for i in range(per_class):
            pixels = np.clip(base + rng.integers(0, 75, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return root


def write_dataset(root: Path, train_per_class: int = 6, val_per_class: int = 3) -> Path:
    write_images(root / "train", per_class=train_per_class, seed=0)
    write_images(root / "val", per_class=val_per_class, seed=1)
    return root


def write_config(
    path: Path, data_root: Path, runs: Path, max_epochs: int = 2, backbone: str = "resnet18", model: dict | None = None, **data
) -> Path:
    """A deterministic CPU config: random crops and shuffling (so RNG matters), cosine LR, no workers."""
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_epochs": max_epochs,
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": True,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(runs), "name": "run", "default_hp_metric": False},
            },
        },
        "model": {
            "backbone": backbone,
            "weights": None,
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01, "momentum": 0.9}},
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 4}},
            **(model or {}),
        },
        "data": {
            "root": str(data_root),
            "image_size": 32,
            "resize_size": 32,
            "crop_scale": [0.5, 1.0],
            "batch_size": 4,
            "num_workers": 0,
            **data,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: helpers importable, one thread per process (2 shared cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS_DIR), str(REPO), env.get("PYTHONPATH", "")])
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


class SignalAt(Callback):
    """Send ``signum`` to this process after training batch ``batch`` of epoch ``epoch`` (simulates a preemption)."""

    def __init__(self, epoch: int = 1, batch: int = 1, signum: int = int(signal.SIGTERM)) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


class SaveRankState(Callback):
    """At the end of fit, save every rank's state_dict, validation metrics and sample counts to ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.val_indices: list[int] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.val_indices = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_indices.extend(batch["index"].tolist())

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": state,
                "initial": self.initial,
                "metrics": metrics,
                "val_indices": self.val_indices,
                "world_size": trainer.world_size,
            },
            Path(self.folder) / f"rank{trainer.global_rank}.pt",
        )

"""Throughput of FinetuneClassifier + Trainer against the plain PyTorch loop of the seed recipe.

Same model (resnet18 from random init), same data (the digits demo, 32 px PNGs read from disk through
the same DataLoader), same batch size and optimizer. The two are alternated in one run, epoch by
epoch, so that both see the same machine state; each side's time counts only the training loop
of an epoch (Trainer set-up is excluded). Prints images/s of both and, last, ``ratio: <ours / plain>``.

    python benchmarks/parity.py [--rounds 3] [--batch-size 64] [--num-workers 2] [--backbone resnet18]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn

from lit_finetune import FinetuneClassifier, ImageFolderDataModule, keys

warnings.filterwarnings("ignore")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_epoch(model: nn.Module, loader, optimizer, device: torch.device) -> float:
    """One epoch of the seed's loop: zero_grad, forward, loss, backward, step."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        inputs = batch[keys.IMAGE].to(device, non_blocking=True)
        labels = batch[keys.TARGET].to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


class EpochTimer(Callback):
    """Wall time of the training loop of each epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--data", default=None, help="digits folder (default: a temporary one)")
    args = parser.parse_args()

    root = args.data or tempfile.mkdtemp(prefix="parity-")
    dm = ImageFolderDataModule(
        root + "/digits", demo="digits", batch_size=args.batch_size, num_workers=args.num_workers,
        image_size=32, resize_size=32, hflip=False, crop_scale=(0.7, 1.0), persistent_workers=args.num_workers > 0,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    n_images = len(dm.train_set)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)
    ours = FinetuneClassifier(num_classes=dm.num_classes, backbone=args.backbone, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    torch.manual_seed(0)
    plain = FinetuneClassifier(num_classes=dm.num_classes, backbone=args.backbone)
    plain_model = nn.Sequential(plain.backbone, plain.head).to(device)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9)

    timer = EpochTimer()
    plain_times = []
    plain_epoch(plain_model, loader, plain_opt, device)  # warm-up of both sides
    for round_ in range(args.rounds + 1):  # round 0 warms our side up
        trainer = Trainer(
            max_epochs=1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
        )
        trainer.fit(ours, train_dataloaders=loader)  # one epoch, timed by EpochTimer
        if round_ > 0:
            plain_times.append(plain_epoch(plain_model, loader, plain_opt, device))
    ours_ips = n_images / statistics.median(timer.times[1:])
    plain_ips = n_images / statistics.median(plain_times)
    print(f"device: {device}, backbone: {args.backbone}, batch: {args.batch_size}, images/epoch: {n_images}, rounds: {args.rounds}")
    print(f"plain loop:                  {plain_ips:8.1f} images/s")
    print(f"FinetuneClassifier + Trainer: {ours_ips:8.1f} images/s")
    print(f"ratio: {ours_ips / plain_ips:.3f}")


if __name__ == "__main__":
    main()

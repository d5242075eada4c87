"""Throughput of FinetuneClassifier + Trainer against the plain PyTorch loop of the seed recipe.

Same model (resnet18 from random init), same data (the digits demo, 32 px PNGs read from disk through
the same DataLoader), same batch size and optimizer. The two are alternated in one run, epoch by
epoch, so that both see the same machine state; each side's time counts only the training loop
of an epoch (Trainer set-up is excluded). Both sides train on the same loader (the data module's training
augmentation) and, unless ``--ema-decay 0``, keep an EMA of the weights updated after every step: ours with
Lightning's ``EMAWeightAveraging``, the plain loop with ``torch.optim.swa_utils.AveragedModel`` and the same
averaging function. Prints images/s of both and, last, ``ratio: <ours / plain>``.

``--backbone`` takes any backbone name of the module, timm's too (``timm/resnet18``): the plain loop then trains
the same timm model (the module's backbone and head in an ``nn.Sequential``).

    python benchmarks/parity.py [--rounds 3] [--batch-size 64] [--num-workers 2] [--backbone resnet18] [--ema-decay 0.999]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from lit_finetune import FinetuneClassifier, ClassificationDataModule, keys
from _timing import EpochTimer, sync

warnings.filterwarnings("ignore")



def plain_epoch(model: nn.Module, loader, optimizer, device: torch.device, ema: AveragedModel | None = None) -> float:
    """One epoch of the seed's loop: zero_grad, forward, loss, backward, step (and the EMA update)."""
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
        if ema is not None:
            ema.update_parameters(model)
    sync(device)
    return time.perf_counter() - start



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--data", default=None, help="digits folder (default: a temporary one)")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights on both sides; 0: off")
    args = parser.parse_args()

    root = args.data or tempfile.mkdtemp(prefix="parity-")
    dm = ClassificationDataModule(
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
    ema = args.ema_decay > 0
    # The same averaging as EMAWeightAveraging: parameters and buffers, one tensor at a time.
    plain_ema = AveragedModel(plain_model, avg_fn=get_ema_avg_fn(args.ema_decay), use_buffers=True) if ema else None

    timer = EpochTimer()
    plain_times = []
    plain_epoch(plain_model, loader, plain_opt, device, plain_ema)  # warm-up of both sides
    for round_ in range(args.rounds + 1):  # round 0 warms our side up
        trainer = Trainer(
            max_epochs=1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[timer, *([EMAWeightAveraging(decay=args.ema_decay)] if ema else [])],
        )
        trainer.fit(ours, train_dataloaders=loader)  # one epoch, timed by EpochTimer
        if round_ > 0:
            plain_times.append(plain_epoch(plain_model, loader, plain_opt, device, plain_ema))
    ours_ips = n_images / statistics.median(timer.times[1:])
    plain_ips = n_images / statistics.median(plain_times)
    print(f"device: {device}, backbone: {args.backbone}, batch: {args.batch_size}, images/epoch: {n_images}, rounds: {args.rounds}, "
          f"EMA: {args.ema_decay if ema else 'off'}")
    print(f"plain loop:                  {plain_ips:8.1f} images/s")
    print(f"FinetuneClassifier + Trainer: {ours_ips:8.1f} images/s")
    print(f"ratio: {ours_ips / plain_ips:.3f}")


if __name__ == "__main__":
    main()

"""Throughput of SegmentationModule + Trainer against a plain PyTorch training loop.

Same network (a resnet18 encoder with the U-Net decoder, random init, identical weights), same data (the
digits_seg demo: 64x64 PNG images and masks read from disk through the same DataLoader), same batch, same
loss (the module's default ``CEDiceLoss``) and optimizer. The two are alternated in one run, epoch by
epoch, so that both see the same machine state; each side's time counts only the training loop of an
epoch (Trainer set-up is excluded). Our side also updates its training metrics (mIoU, Dice, pixel
accuracy from one confusion matrix) and keeps per-sample losses, as it does in real runs. Prints images/s
of both and, last, ``ratio: <ours / plain>``.

    python benchmarks/segmentation_parity.py [--rounds 3] [--images 512] [--batch-size 16] [--num-workers 2] [--backbone resnet18]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torch import nn

from lit_finetune import SegmentationDataModule, keys
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.modules.segmentation import SegmentationModule
from _timing import EpochTimer, sync

warnings.filterwarnings("ignore")



def plain_epoch(model: nn.Module, criterion: nn.Module, loader, optimizer, device: torch.device) -> float:
    """One epoch of a hand-written loop: zero_grad, forward, loss, backward, step."""
    model.train()
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        images = batch[keys.IMAGE].to(device, non_blocking=True)
        masks = batch[keys.TARGET].to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = criterion(model(images)[keys.LOGITS], masks)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512, help="training images of the demo")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--data", default=None, help="digits_seg folder (default: a temporary one)")
    args = parser.parse_args()

    root = Path(args.data or tempfile.mkdtemp(prefix="seg-parity-")) / "digits_seg"
    write_digit_segmentation(root, n_train=args.images, n_val=max(2, args.images // 8))
    dm = SegmentationDataModule(
        str(root), batch_size=args.batch_size, num_workers=args.num_workers, image_size=64, hflip=False,
        crop_scale=(0.6, 1.0), persistent_workers=args.num_workers > 0,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    n_images = len(dm.train_set)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    options = {"num_classes": dm.num_classes, "backbone": args.backbone, "decoder_channels": [64, 32, 16, 16]}
    torch.manual_seed(0)
    ours = SegmentationModule(**options, optimizer=optimizer)
    torch.manual_seed(0)
    plain = SegmentationModule(**options)
    plain_model, criterion = plain.network.to(device), plain.loss.to(device)
    plain_opt = optimizer(plain_model.parameters())

    timer = EpochTimer()
    plain_times = []
    plain_epoch(plain_model, criterion, loader, plain_opt, device)  # warm-up of both sides
    for round_ in range(args.rounds + 1):  # round 0 warms our side up
        trainer = Trainer(
            max_epochs=1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
        )
        trainer.fit(ours, train_dataloaders=loader)  # one epoch, timed by EpochTimer
        if round_ > 0:
            plain_times.append(plain_epoch(plain_model, criterion, loader, plain_opt, device))
    ours_ips = n_images / statistics.median(timer.times[1:])
    plain_ips = n_images / statistics.median(plain_times)
    print(f"device: {device}, backbone: {args.backbone}, batch: {args.batch_size}, images/epoch: {n_images}, rounds: {args.rounds}")
    print(f"plain loop:                   {plain_ips:8.1f} images/s")
    print(f"SegmentationModule + Trainer: {ours_ips:8.1f} images/s")
    print(f"ratio: {ours_ips / plain_ips:.3f}")


if __name__ == "__main__":
    main()

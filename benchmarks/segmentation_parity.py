"""Throughput of SegmentationModule + Trainer against a plain PyTorch training loop.

Same network (a resnet18 encoder with the U-Net decoder, random init, identical weights), same data through
one DataLoader, same batch, same loss (the module's default ``CEDiceLoss``) and optimizer. By default the data
are in-memory random 64x64 images and masks read in the main process, so that costs both sides would pay alike
(decoding PNGs in workers that share the cores) are left out; ``--data digits_seg`` reads the digits_seg demo's
PNG images and masks through the data module's loader instead. Our side also updates its training metrics
(mIoU, Dice, pixel accuracy from one confusion matrix) and the exact epoch loss, as it does in real runs.

Each round times one epoch of each side, back to back, in alternating order; round 0 warms both up and is
discarded. Only the training loop of an epoch counts (Trainer set-up excluded). Prints per side the median
images/s and its spread over the rounds, each round's ratio, and last ``ratio: <median of the rounds' ratios,
ours / plain>`` (the target is >= 0.97).

    python benchmarks/segmentation_parity.py [--rounds 5] [--images 768] [--batch-size 16] [--data random|digits_seg] [--clock wall|cpu]
    python benchmarks/segmentation_parity.py --rounds 1 --images 64    # a quick check that it runs
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch
from _timing import CLOCKS, EpochTimer, RandomMasks, arm_order, now, print_ratio, sync, use_clock
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader

from lit_finetune import SegmentationDataModule, keys
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.modules.segmentation import SegmentationModule

warnings.filterwarnings("ignore")
ARMS = ("SegmentationModule + Trainer", "plain loop")


def plain_epoch(model: nn.Module, criterion: nn.Module, loader, optimizer, device: torch.device) -> float:
    """One epoch of a hand-written loop: zero_grad, forward, loss, backward, step."""
    model.train()
    sync(device)
    start = now()
    for batch in loader:
        images = batch[keys.IMAGE].to(device, non_blocking=True)
        masks = batch[keys.TARGET].to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = criterion(model(images)[keys.LOGITS], masks)
        loss.backward()
        optimizer.step()
    sync(device)
    return now() - start


def our_epoch(model: SegmentationModule, loader, timer: EpochTimer) -> float:
    """One epoch of ``Trainer.fit`` (a fresh Trainer each time: its set-up is not timed)."""
    trainer = Trainer(
        max_epochs=1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    return timer.times[-1]


def make_loader(args: argparse.Namespace) -> tuple[DataLoader, int]:
    """The training loader both sides read, and the number of classes."""
    if args.data == "random":
        data = RandomMasks(args.images, 64, 4)
        return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers, drop_last=True), 4
    root = Path(tempfile.mkdtemp(prefix="seg-parity-")) / "digits_seg"
    write_digit_segmentation(root, n_train=args.images, n_val=max(2, args.images // 8))
    dm = SegmentationDataModule(
        str(root), batch_size=args.batch_size, num_workers=args.num_workers, image_size=64, hflip=False,
        crop_scale=(0.6, 1.0), persistent_workers=args.num_workers > 0,
    )  # fmt: skip
    dm.setup("fit")
    return dm.train_dataloader(), dm.num_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one epoch of each side), after one warm-up round")
    parser.add_argument("--images", type=int, default=768, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--data", choices=["random", "digits_seg"], default="random", help="in-memory images, or the digits_seg demo's PNGs"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: this process's CPU time, for a shared machine")
    args = parser.parse_args()
    use_clock(args.clock)

    loader, num_classes = make_loader(args)
    n_images = len(loader) * args.batch_size if args.data == "random" else len(loader.dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    options = {"num_classes": num_classes, "backbone": args.backbone, "decoder_channels": [64, 32, 16, 16]}
    torch.manual_seed(0)
    ours = SegmentationModule(**options, optimizer=optimizer)
    torch.manual_seed(0)
    plain = SegmentationModule(**options)
    plain_model, criterion = plain.network.to(device), plain.loss.to(device)
    plain_opt = optimizer(plain_model.parameters())

    timer = EpochTimer()
    epoch = {
        ARMS[0]: lambda: our_epoch(ours, loader, timer),
        ARMS[1]: lambda: plain_epoch(plain_model, criterion, loader, plain_opt, device),
    }
    rates: dict[str, list[float]] = {name: [] for name in ARMS}
    for round_ in range(args.rounds + 1):  # round 0 warms both sides up
        for name in arm_order(round_, ARMS):
            seconds = epoch[name]()
            if round_ > 0:
                rates[name].append(n_images / seconds)
    print(f"device: {device}, backbone: {args.backbone}, batch: {args.batch_size}, images/epoch: {n_images}, data: {args.data}, "
          f"rounds: {args.rounds} (+1 warm-up), clock: {args.clock}")  # fmt: skip
    print_ratio(ARMS, rates, "images/s")


if __name__ == "__main__":
    main()

"""Throughput of FinetuneClassifier + Trainer against the plain PyTorch loop of the seed recipe.

Same model (resnet18 from random init, identical weights), same data through one DataLoader, same batch size,
loss (cross-entropy) and optimizer. By default the data are in-memory random 32 px images read in the main
process and neither side keeps an EMA of the weights: costs both sides would pay alike (decoding PNGs in
workers that share the cores, an EMA update) are left out, so the ratio measures our training step against the
plain one. ``--data digits`` reads the digits demo's PNGs through the data module's loader instead;
``--ema-decay 0.999`` adds an EMA on both sides (``EMAWeightAveraging``; the plain loop ``AveragedModel`` with the
same averaging).

Each round times one epoch of each side, back to back, in alternating order; round 0 warms both up and is
discarded. Only the training loop of an epoch counts (Trainer set-up excluded). Prints per side the median
images/s and its spread over the rounds, each round's ratio, and last ``ratio: <median of the rounds' ratios,
ours / plain>`` (the target is >= 0.97).

    python benchmarks/parity.py [--rounds 5] [--images 3072] [--batch-size 64] [--data random|digits] [--ema-decay 0] [--backbone resnet18] [--clock wall|cpu]
    python benchmarks/parity.py --rounds 1 --images 256    # a quick check that it runs

``--backbone`` takes any backbone name of the module, timm's too (``timm/resnet18``): the plain loop then trains
the same timm model (the module's backbone and head in an ``nn.Sequential``).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import torch
from _timing import CLOCKS, EpochTimer, RandomImages, arm_order, now, print_ratio, sync, use_clock
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn
from torch.utils.data import DataLoader

from lit_finetune import ClassificationDataModule, FinetuneClassifier, keys

warnings.filterwarnings("ignore")
ARMS = ("FinetuneClassifier + Trainer", "plain loop")


def plain_epoch(model: nn.Module, loader, optimizer, device: torch.device, ema: AveragedModel | None = None) -> float:
    """One epoch of the seed's loop: zero_grad, forward, loss, backward, step (and the EMA update)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    sync(device)
    start = now()
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
    return now() - start


def our_epoch(model: FinetuneClassifier, loader, timer: EpochTimer, ema_decay: float) -> float:
    """One epoch of ``Trainer.fit`` (a fresh Trainer each time: its set-up is not timed)."""
    trainer = Trainer(
        max_epochs=1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[timer, *([EMAWeightAveraging(decay=ema_decay)] if ema_decay > 0 else [])],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    return timer.times[-1]


def make_loader(args: argparse.Namespace) -> tuple[DataLoader, int]:
    """The training loader both sides read, and the number of classes."""
    if args.data == "random":
        data = RandomImages(args.images, 32, 10)
        return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers, drop_last=True), 10
    root = tempfile.mkdtemp(prefix="parity-")
    dm = ClassificationDataModule(
        root + "/digits", demo="digits", batch_size=args.batch_size, num_workers=args.num_workers,
        image_size=32, resize_size=32, hflip=False, crop_scale=(0.7, 1.0), persistent_workers=args.num_workers > 0,
    )  # fmt: skip
    dm.setup("fit")
    return dm.train_dataloader(), dm.num_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one epoch of each side), after one warm-up round")
    parser.add_argument("--images", type=int, default=3072, help="images per epoch (--data random)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", choices=["random", "digits"], default="random", help="in-memory images, or the digits demo's PNGs")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="EMA of the weights on both sides; 0: off")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: this process's CPU time, for a shared machine")
    args = parser.parse_args()
    use_clock(args.clock)

    loader, num_classes = make_loader(args)
    n_images = len(loader) * args.batch_size if args.data == "random" else len(loader.dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def optimizer(p):
        return torch.optim.SGD(p, lr=0.01, momentum=0.9)

    torch.manual_seed(0)
    ours = FinetuneClassifier(num_classes=num_classes, backbone=args.backbone, optimizer=optimizer)
    torch.manual_seed(0)
    plain = FinetuneClassifier(num_classes=num_classes, backbone=args.backbone)
    plain_model = nn.Sequential(plain.backbone, plain.head).to(device)
    plain_opt = optimizer(plain_model.parameters())
    # The same averaging as EMAWeightAveraging: parameters and buffers, one tensor at a time.
    plain_ema = AveragedModel(plain_model, avg_fn=get_ema_avg_fn(args.ema_decay), use_buffers=True) if args.ema_decay > 0 else None

    timer = EpochTimer()
    epoch = {
        ARMS[0]: lambda: our_epoch(ours, loader, timer, args.ema_decay),
        ARMS[1]: lambda: plain_epoch(plain_model, loader, plain_opt, device, plain_ema),
    }
    rates: dict[str, list[float]] = {name: [] for name in ARMS}
    for round_ in range(args.rounds + 1):  # round 0 warms both sides up
        for name in arm_order(round_, ARMS):
            seconds = epoch[name]()
            if round_ > 0:
                rates[name].append(n_images / seconds)
    print(f"device: {device}, backbone: {args.backbone}, batch: {args.batch_size}, images/epoch: {n_images}, data: {args.data}, "
          f"rounds: {args.rounds} (+1 warm-up), clock: {args.clock}, EMA: {args.ema_decay or 'off'}")  # fmt: skip
    print_ratio(ARMS, rates, "images/s")


if __name__ == "__main__":
    main()

"""Training throughput with every diagnostics callback at its default interval vs none, in one run.

Fits the same small model on the same synthetic image folder several times, alternating "with" and
"without" so that drifting machine load hits both alike, and prints the median throughput of each
and, last, ``ratio: <with / without>`` (the target is >= 0.95). Both arms train with the data module's
default augmentation and, unless ``--ema-decay 0``, an EMA of the weights (``EMAWeightAveraging``).

    python benchmarks/callback_overhead.py                 # resnet18 at 32 px on the CPU
    python benchmarks/callback_overhead.py --clock cpu --threads 1   # on a busy shared machine
    python benchmarks/callback_overhead.py --accelerator gpu --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lit_finetune.callbacks.best_worst import BestWorstSamples
from lit_finetune.callbacks.classification_report import ValidationReport
from lit_finetune.callbacks.data_timing import DataTiming
from lit_finetune.callbacks.gradcam import GradCAM
from lit_finetune.callbacks.gradient_stats import GradientStats
from lit_finetune.callbacks.hparams import HParamsSummary
from lit_finetune.callbacks.nan_guard import NanGuard
from lit_finetune.data.datamodule import ClassificationDataModule
from lit_finetune.modules.classifier import FinetuneClassifier


def write_images(root: Path, classes: int, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                img[c * size // classes : (c + 1) * size // classes] = 255
                Image.fromarray(img).save(folder / f"{i}.png")


def diagnostics() -> list[Callback]:
    return [BestWorstSamples(), GradientStats(), NanGuard(), GradCAM(), ValidationReport(), DataTiming(), HParamsSummary()]


class TrainTimer(Callback):
    """Time of the training loop (validation included, setup excluded) and the samples trained on.

    ``clock="wall"`` measures elapsed time; ``clock="cpu"`` this process's CPU time, which other
    programs on a shared machine do not inflate.
    """

    def __init__(self, clock: str = "wall") -> None:
        self.clock = time.perf_counter if clock == "wall" else time.process_time

    def on_train_start(self, trainer, pl_module):
        self.samples, self.start = 0, self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch["image"])

    def on_train_end(self, trainer, pl_module):
        self.seconds = self.clock() - self.start


def fit_once(args: argparse.Namespace, root: Path, logs: Path, with_callbacks: bool, limit_batches: int | None = None) -> float:
    seed_everything(0, verbose=False)
    model = FinetuneClassifier(num_classes=args.classes, backbone=args.backbone, optimizer=torch.optim.AdamW)
    data = ClassificationDataModule(
        str(root), batch_size=args.batch_size, num_workers=args.num_workers, backbone=args.backbone,
        image_size=args.image_size, resize_size=args.image_size,
    )
    timer = TrainTimer(args.clock)
    ema = [EMAWeightAveraging(decay=args.ema_decay)] if args.ema_decay > 0 else []
    trainer = Trainer(
        max_epochs=1 if limit_batches else args.epochs, accelerator=args.accelerator, devices=1, logger=TensorBoardLogger(str(logs)),
        callbacks=[timer, *ema, *(diagnostics() if with_callbacks else [])], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_train_batches=limit_batches, limit_val_batches=limit_batches,
    )
    trainer.fit(model, datamodule=data)
    return timer.samples / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=160, help="training images per class")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="fits per setting, alternating")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time, for shared CPU machines")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights in both arms; 0: off")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        write_images(root, args.classes, args.per_class, args.image_size)
        fit_once(args, root, Path(tmp) / "warmup", with_callbacks=True, limit_batches=2)  # lazy imports (captum, matplotlib)
        rates: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for with_callbacks in (False, True) if round_ % 2 == 0 else (True, False):
                rate = fit_once(args, root, Path(tmp) / "logs", with_callbacks)
                rates[with_callbacks].append(rate)
                print(f"round {round_}: {'with' if with_callbacks else 'without'} callbacks: {rate:.1f} samples/s", flush=True)
    with_rate, without_rate = statistics.median(rates[True]), statistics.median(rates[False])
    steps = args.epochs * -(-args.classes * args.per_class // args.batch_size)
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {steps} steps per fit, log_every_n_steps 50, {args.clock} clock, "
          f"EMA {args.ema_decay or 'off'}")
    print(f"median without: {without_rate:.1f} samples/s, with all diagnostics: {with_rate:.1f} samples/s")
    print(f"ratio: {with_rate / without_rate:.3f}")


if __name__ == "__main__":
    main()

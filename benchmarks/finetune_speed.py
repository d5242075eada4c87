"""Speed of full fine-tuning vs a frozen backbone vs cached features, measured in one run.

Three fits of the same model on the same in-memory images (so that image decoding does not hide
the model's cost), each through ``FinetuneClassifier`` and a Lightning ``Trainer``:

- ``full``:   every parameter trains;
- ``frozen``: ``freeze="backbone"``: the backbone runs in eval mode under ``no_grad``, only the head trains;
- ``cached``: ``freeze="backbone", cache_features=True``: features are computed in the first epoch,
  later epochs train the head on the cache.

The epoch time of a mode is the median of its epochs after the first (the first one warms up, and
fills the cache). Memory: the CUDA peak on a GPU; on CPU, the largest amount of activations that
autograd kept for the backward pass in one step (what freezing saves).
Prints a table, then ``frozen_speedup: <x>`` and ``cached_speedup: <x>`` (full time / mode time).

    python benchmarks/finetune_speed.py --backbone resnet18 --image-size 64 --epochs 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from _timing import RandomImages
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from lit_finetune.modules.classifier import FinetuneClassifier


class EpochTimer(Callback):
    """Wall time of every training epoch and the memory measure of the run."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.saved_bytes = 0
        self._start = 0.0
        self._step_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda packed: packed)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._step_bytes += tensor.numel() * tensor.element_size()
        return tensor

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not torch.cuda.is_available():
            self._step_bytes = 0
            self._hooks.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not torch.cuda.is_available():
            self._hooks.__exit__(None, None, None)
            self.saved_bytes = max(self.saved_bytes, self._step_bytes)


def run(mode: str, args: argparse.Namespace) -> tuple[float, float]:
    """Median epoch time (after the first) and memory in MiB of one mode."""
    seed_everything(0, verbose=False)
    options = {"full": {}, "frozen": {"freeze": "backbone"}, "cached": {"freeze": "backbone", "cache_features": True}}[mode]
    model = FinetuneClassifier(
        num_classes=args.num_classes,
        backbone=args.backbone,
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
        **options,
    )
    data = DataLoader(RandomImages(args.num_images, args.image_size, args.num_classes), batch_size=args.batch_size, shuffle=True)
    timer = EpochTimer()
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, data)
    memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else timer.saved_bytes
    return statistics.median(timer.times[1:]), memory / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2: the first epoch is not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is a warm-up (and fills the cache).")
    if args.threads:
        torch.set_num_threads(args.threads)
    memory_name = "peak_cuda_mib" if torch.cuda.is_available() else "saved_activations_mib"
    results = {mode: run(mode, args) for mode in ("full", "frozen", "cached")}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.backbone}, {args.num_images} images of {args.image_size} px, batch {args.batch_size}, {device}")
    print(f"{'mode':<8} {'epoch_s':>9} {memory_name:>22}")
    for mode, (seconds, memory) in results.items():
        print(f"{mode:<8} {seconds:>9.4f} {memory:>22.1f}")
    full = results["full"][0]
    print(f"frozen_speedup: {full / results['frozen'][0]:.2f}")
    print(f"cached_speedup: {full / results['cached'][0]:.2f}")


if __name__ == "__main__":
    main()

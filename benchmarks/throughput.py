"""Training throughput of FinetuneClassifier at 224 px, its fraction of the device's matmul peak, and what the switches buy.

For each backbone (default ``resnet18`` and ``squeezenet1_1``) the module is trained by a
Lightning ``Trainer`` on in-memory random images (no decoding cost), on whatever device is present.
Reported per backbone:

- ``images/s``: median over rounds of the steady training rate (the first ``--warmup`` steps of a fit
  are left out);
- ``fraction_of_peak``: achieved FLOP/s of the training step (forward and backward counted by
  ``torch.utils.flop_counter.FlopCounterMode``, times images/s) divided by the device's matmul peak,
  measured in the same run with a large fp32 matmul (a bf16 run is divided by the bf16 peak).
  FlopCounterMode over-counts the backward of grouped (depthwise) convolutions (mobilenet, efficientnet,
  convnext, regnet: about 25x for mobilenet_v3_large in torch 2.14), so the default families have none.

``--compare channels_last,bf16,compile`` also trains with each switch (``model.channels_last``,
``trainer.precision="bf16-mixed"``, ``model.compile``), alternating with the default in every round,
and prints ``speedup: <option>: X`` (option images/s / default images/s, medians). The figure of the
run is printed last: ``fraction_of_peak: X`` of the first backbone with default settings.

    python benchmarks/throughput.py                                 # CPU-sized defaults, a few minutes
    python benchmarks/throughput.py --compare channels_last,bf16,compile
    python benchmarks/throughput.py --batch-size 128 --steps 30 --compare channels_last,bf16,compile   # on a GPU
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import torch
from _timing import RandomImages, sync
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from lit_finetune import keys
from lit_finetune.modules.classifier import FinetuneClassifier

OPTIONS = ("channels_last", "bf16", "compile")


class StepTimer(Callback):
    """Images/s between the end of step ``warmup`` and the end of the last step of a fit."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.rate = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.warmup:
            sync(pl_module.device)
            self.start, self.images = time.perf_counter(), 0
        elif batch_idx + 1 > self.warmup:
            self.images += len(batch[keys.IMAGE])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.rate = self.images / (time.perf_counter() - self.start)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of a ``size x size`` matmul in ``dtype`` (best of ``repeats``, after a warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(model: FinetuneClassifier, batch_size: int, size: int, device: torch.device) -> float:
    """FLOPs of one training step (forward and backward) per image, counted by FlopCounterMode."""
    model = model.to(device).train()
    images = torch.randn(batch_size, 3, size, size, device=device)
    batch = {keys.IMAGE: images, keys.TARGET: torch.zeros(batch_size, dtype=torch.long, device=device)}
    with FlopCounterMode(display=False) as counter:
        model.compute_loss(model(batch[keys.IMAGE]), batch[keys.TARGET]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def build(backbone: str, option: str, args: argparse.Namespace) -> tuple[FinetuneClassifier, dict[str, Any]]:
    """The module of an arm and the Trainer options it needs."""
    torch.manual_seed(0)
    model = FinetuneClassifier(
        num_classes=10,
        backbone=backbone,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        channels_last=option == "channels_last",
        compile=option == "compile",
        compile_backend=args.compile_backend,
    )
    trainer_options = {"precision": "bf16-mixed"} if option == "bf16" else {}
    return model, trainer_options


def fit_rate(model: FinetuneClassifier, loader: DataLoader, args: argparse.Namespace, trainer_options: dict[str, Any]) -> float:
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=args.warmup + args.steps,
        limit_val_batches=0,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **trainer_options,
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="resnet18,squeezenet1_1", help="comma-separated torchvision names")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every fit (compiling: the first)")
    parser.add_argument("--rounds", type=int, default=3, help="fits per arm, alternating arms")
    parser.add_argument("--compare", default="", help=f"comma-separated switches to compare with the default: {', '.join(OPTIONS)}")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = [o for o in args.compare.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown --compare options {unknown}; choose from {list(OPTIONS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = {"fp32": matmul_peak(device, torch.float32, args.matmul_size), "bf16": matmul_peak(device, torch.bfloat16, args.matmul_size)}
    n = args.batch_size * (args.warmup + args.steps)
    loader = DataLoader(RandomImages(n, args.image_size, 10), batch_size=args.batch_size, shuffle=False, num_workers=0, drop_last=True)
    print(
        f"device: {device} ({torch.get_num_threads()} CPU threads), {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds",
        flush=True,
    )
    print(f"matmul peak {args.matmul_size}^3: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    figure = None
    speedups = []
    for backbone in args.backbones.split(","):
        arms = ["default", *options]
        models = {arm: build(backbone, arm, args) for arm in arms}
        flops = training_flops(build(backbone, "default", args)[0], args.batch_size, args.image_size, device)
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        for round_ in range(args.rounds):
            order = arms[round_ % len(arms) :] + arms[: round_ % len(arms)]  # a different arm first every round
            for arm in order:
                model, trainer_options = models[arm]
                rates[arm].append(fit_rate(model, loader, args, trainer_options))
            print(f"{backbone} round {round_}: " + ", ".join(f"{arm} {rates[arm][-1]:.1f}" for arm in arms) + " images/s", flush=True)
        medians = {arm: statistics.median(values) for arm, values in rates.items()}
        for arm in arms:
            fraction = medians[arm] * flops / peak["bf16" if arm == "bf16" else "fp32"]
            print(
                f"{backbone} {arm}: {medians[arm]:.1f} images/s, {flops / 1e9:.2f} GFLOP per image (fwd+bwd), "
                f"{medians[arm] * flops / 1e9:.1f} GFLOP/s, fraction_of_peak {fraction:.3f}"
            )
            if arm != "default":
                speedups.append(f"speedup: {arm}: {medians[arm] / medians['default']:.3f} ({backbone})")
        if figure is None:
            figure = medians["default"] * flops / peak["fp32"]
    for line in speedups:
        print(line)
    print(f"fraction_of_peak: {figure:.3f}")


if __name__ == "__main__":
    main()

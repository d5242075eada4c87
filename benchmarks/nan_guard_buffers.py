"""Per-step cost of NanGuard's snapshot of the buffers a forward pass changes.

Compares cloning every buffer (what a general snapshot costs) with NanGuard's copy of the running
statistics of training-mode normalization layers into tensors kept from the previous step, and prints
both next to the time of one training step (forward, backward, SGD) at the same batch size.

Usage: ``python benchmarks/nan_guard_buffers.py [--device cuda] [--size 64] [--batch 8]``
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch import nn

from lit_finetune.callbacks.nan_guard import NanGuard


def _time(fn, device: str, repeat: int) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1e3


def measure(name: str, device: str, size: int, batch: int, repeat: int) -> str:
    model = torchvision.models.get_model(name, num_classes=10).to(device).train()
    guard = NanGuard()
    clone_all = _time(lambda: [b.detach().clone() for b in model.buffers()], device, repeat)
    guarded = _time(lambda: guard.on_train_batch_start(None, model, {}, 0), device, repeat)
    images, targets = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()

    train = _time(step, device, max(3, repeat // 50))
    count = sum(1 for _ in model.buffers())
    return f"{name:16s} {count:4d} buffers  clone all {clone_all:7.3f} ms  NanGuard {guarded:7.3f} ms  training step {train:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "efficientnet_b0", "swin_t"])
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.models:
        print(measure(name, args.device, args.size, args.batch, args.repeat), flush=True)


if __name__ == "__main__":
    main()

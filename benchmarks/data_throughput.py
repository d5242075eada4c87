"""Does the data path keep up with training? Images/s of decoding + augmentation + collation, and ``fed_ratio``.

Real photographs: the sample photographs scikit-image ships (cut into 500x375 crops, JPEG quality 90) when it is
installed, else the JPEGs under ``--photos`` (default ``/work/shared/data/cats_dogs``: ``cat/`` and ``dog/``). Nothing
is downloaded; without either, the script says so and exits.

Printed, in one run:

- ``optimize``: seconds per 1,000 images of ``lit-finetune optimize`` (``optimize_datamodule``) into local shards;
- ``data_path``: images/s of the training data path alone (read, decode, ``RandomResizedCrop`` + flip + normalize
  at ``--image-size``, collate; ``--num-workers`` loader workers) from loose files and from shards, decoding with
  PIL and with ``torchvision.io.decode_jpeg``;
- ``train``: training images/s of resnet18 (random init) from in-memory tensors and from the shards with the default
  decoder, and ``fed_ratio: X`` = the second / the first (1.0: the data path costs training nothing).

    python benchmarks/data_throughput.py                        # CPU-sized defaults
    python benchmarks/data_throughput.py --images 2000 --batch-size 64 --train-steps 30   # on a GPU machine
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _timing import RandomImages, sync
from lightning.pytorch import Callback, Trainer
from PIL import Image
from torch.utils.data import DataLoader

from lit_finetune import keys
from lit_finetune.data.base import auto_num_workers
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.data.decode import decode_pil, decode_torchvision
from lit_finetune.data.folder import ImageDataset
from lit_finetune.data.shards import file_bytes, optimize_datamodule
from lit_finetune.data.streaming import StreamingDataModule
from lit_finetune.modules.classifier import FinetuneClassifier

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat")


def skimage_photos(folder: Path, count: int) -> bool:
    """Write ``count`` JPEG crops of scikit-image's sample photographs as two classes; False without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return False
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in SKIMAGE_PHOTOS if hasattr(data, name)]
    for i in range(count):
        photo = photos[i % len(photos)].resize((1000, 750))
        x, y = (i * 37) % 500, (i * 53) % 375
        target = folder / ("a" if i % 2 else "b") / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        photo.crop((x, y, x + 500, y + 375)).save(target, quality=90)
    return True


def folder_photos(source: Path, folder: Path, count: int) -> bool:
    """Link ``count`` JPEGs of ``source``'s class folders into ``folder``; False when there are none."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        return False
    for path in files[:: max(1, len(files) // count)][:count]:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, target)
    return True


def read_torchvision(path: str):
    """A loose file decoded by ``torchvision.io`` (what a ``loader`` of ``ImageDataset`` returns)."""
    return decode_torchvision(file_bytes(path))


def read_pil(path: str):
    return decode_pil(file_bytes(path))


def loader_rate(loader: DataLoader) -> float:
    """Images/s over one pass of ``loader`` (the first batch, worker start-up included, left out)."""
    images, start = 0, None
    for batch in loader:
        if start is None:
            start = time.perf_counter()
            continue
        images += len(batch[keys.IMAGE])
    return images / (time.perf_counter() - start) if start and images else float("nan")


class StepTimer(Callback):
    """Training images/s after the first ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.rate = warmup, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.warmup:
            sync(pl_module.device)
            self.start, self.images = time.perf_counter(), 0
        elif batch_idx + 1 > self.warmup:
            self.images += len(batch[keys.IMAGE])

    def on_train_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.rate = self.images / (time.perf_counter() - self.start)


def train_rate(loader: DataLoader, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=2, backbone="resnet18", optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    timer = StepTimer(warmup)
    trainer = Trainer(
        max_steps=warmup + steps,
        limit_val_batches=0,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="/work/shared/data/cats_dogs", help="class folders of JPEGs (used without scikit-image)")
    parser.add_argument("--images", type=int, default=400, help="photographs used")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", default="auto", help="loader workers: an int or auto (the data modules' rule)")
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps at the start of each arm")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    workers = auto_num_workers() if args.num_workers == "auto" else int(args.num_workers)
    tmp = Path(tempfile.mkdtemp(prefix="data_throughput_"))
    try:
        source = "scikit-image sample photographs"
        if not skimage_photos(tmp / "photos", args.images):
            source = args.photos
            if not folder_photos(Path(args.photos), tmp / "photos", args.images):
                print(f"No photographs: scikit-image is not installed and '{args.photos}' holds no JPEGs; pass --photos <class folders>.")
                return
        run(args, workers, source, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, workers: int, source: str, tmp: Path) -> None:
    size = {"image_size": args.image_size}
    folder = ImageFolderDataModule(
        str(tmp / "photos"), val_fraction=0.05, num_workers=workers, batch_size=args.batch_size, check_images=False, **size
    )
    n = len(folder.train_samples)
    sizes = [Image.open(path).size for path, _ in folder.train_samples[:50]]
    mean_bytes = sum(os.path.getsize(path) for path, _ in folder.train_samples) / n
    print(
        f"{source}: {n} training JPEGs, e.g. {sizes[0][0]}x{sizes[0][1]}, {mean_bytes / 1e3:.0f} kB on average; "
        f"{args.image_size} px, batch {args.batch_size}, {workers} loader workers, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    start = time.perf_counter()
    optimize_datamodule(folder, str(tmp / "shards"), num_workers=max(1, workers), chunk_bytes="2MB", splits=["train", "val"])
    elapsed = time.perf_counter() - start
    print(
        f"optimize: {elapsed:.1f} s for {n + len(folder.val_samples)} images = {1000 * elapsed / (n + len(folder.val_samples)):.1f} s per 1,000 images",
        flush=True,
    )

    rates = {}
    for decoder, read in (("pil", read_pil), ("torchvision", read_torchvision)):
        dataset = ImageDataset(folder.train_samples, folder.train_transform, loader=read)
        rates[f"loose files, {decoder}"] = loader_rate(DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers))
        stream = StreamingDataModule(
            str(tmp / "shards"), decoder=decoder, num_workers=workers, batch_size=args.batch_size, persistent_workers=False, **size
        )
        stream.setup("fit")
        rates[f"shards, {decoder}"] = loader_rate(stream.train_dataloader())
    for name, rate in rates.items():
        print(f"data_path: {name}: {rate:.0f} images/s", flush=True)

    steps = args.warmup + args.train_steps
    memory = DataLoader(RandomImages(steps * args.batch_size, args.image_size, 2), batch_size=args.batch_size, num_workers=0)
    in_memory = train_rate(memory, args.train_steps, args.warmup)
    stream = StreamingDataModule(str(tmp / "shards"), num_workers=workers, batch_size=args.batch_size, **size)
    stream.setup("fit")
    fed = train_rate(stream.train_dataloader(), args.train_steps, args.warmup)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"train: resnet18 on {device}: in-memory tensors {in_memory:.1f} images/s, shards ({stream.decoder}) {fed:.1f} images/s")
    print(f"fed_ratio: {fed / in_memory:.2f}")


if __name__ == "__main__":
    sys.exit(main())

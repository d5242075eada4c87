"""BatchNorm on small data: eval-mode against train-mode validation scores, with and without ``BatchNormMomentum``.

The data: 24 training and 24 validation images of the digits_seg demo with binary 0/255 masks (every digit is
foreground), the electron-microscopy layout. The model: SegmentationModule with a mobilenet_v3_large encoder
(BatchNorm momentum 0.01), random init, 12 epochs of 3 batches (36 optimizer steps). After training, the
validation set is scored twice: in eval mode (the running statistics, as every evaluation does) and with
the BatchNorm layers normalizing each batch by its own statistics ("train mode"). Without the fix the
running statistics stay near their initial values and eval mode falls behind; with ``--momentum`` they
follow the data. Prints one line per setting.

    python benchmarks/batchnorm_small_data.py [--epochs 12] [--momentum 0.1] [--seed 0] [--only model|fixed]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from PIL import Image

from lit_finetune import BatchNormMomentum, SegmentationDataModule, SegmentationModule
from lit_finetune.data.masks import read_mask
from lit_finetune.data.segmentation_demo import write_digit_segmentation


def binary_digits(root: Path, n: int = 24) -> Path:
    """digits_seg with ``n`` training and ``n`` validation pairs, masks 0/255 (any digit is foreground)."""
    demo = write_digit_segmentation(root / "demo", n_train=n, n_val=n)
    out = root / "binary"
    for split in ("train", "val"):
        for image in sorted((demo / split / "images").glob("*.png")):
            for folder in ("images", "masks"):
                (out / split / folder).mkdir(parents=True, exist_ok=True)
            (out / split / "images" / image.name).write_bytes(image.read_bytes())
            mask = (read_mask(demo / split / "masks" / image.name) > 0).astype(np.uint8) * 255
            Image.fromarray(mask).save(out / split / "masks" / image.name)
    return out


def batch_statistics(model: SegmentationModule) -> SegmentationModule:
    """A copy whose BatchNorm layers normalize every batch by its own statistics, also in eval mode."""
    model = copy.deepcopy(model)
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean, layer.running_var = None, None
    return model


def run(root: Path, momentum: float | None, epochs: int, seed: int) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    data = SegmentationDataModule(
        str(root),
        task="binary",
        backbone="mobilenet_v3_large",
        image_size=64,
        batch_size=8,
        num_workers=0,
        hflip=False,
        crop_scale=(0.6, 1.0),
    )
    model = SegmentationModule(
        2,
        backbone="mobilenet_v3_large",
        task="binary",
        decoder_channels=[64, 32, 16, 16],
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.003, weight_decay=0.01),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[BatchNormMomentum(momentum)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    warned = any("BatchNorm running statistics" in str(w.message) for w in caught)
    scores = {"warned": float(warned)}
    for mode, module in (("eval", model), ("train", batch_statistics(model))):
        values = trainer.validate(module, datamodule=data, verbose=False)[0]
        scores.update({f"{mode}_miou": float(values["val/miou"]), f"{mode}_dice_fg": float(values["val/dice_fg"])})
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--momentum", type=float, default=0.1, help="the fixed run's BatchNorm momentum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["model", "fixed"], default=None, help="run one of the two settings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = binary_digits(Path(tmp))
        settings = {"model": [None], "fixed": [args.momentum], None: [None, args.momentum]}[args.only]
        for momentum in settings:
            s = run(root, momentum, args.epochs, args.seed)
            label = "model's momentum (0.01)" if momentum is None else f"--batchnorm.momentum {momentum}"
            print(
                f"{label:>26}: warned {bool(s['warned'])!s:5}  eval-mode mIoU {s['eval_miou']:.3f} Dice_fg {s['eval_dice_fg']:.3f}"
                f"  |  train-mode mIoU {s['train_miou']:.3f} Dice_fg {s['train_dice_fg']:.3f}"
            )


if __name__ == "__main__":
    main()

"""A small binary set with 0/255 masks (the electron-microscopy layout) trains from the documented options alone:
`model.task: binary`, nothing about mask values; the foreground Dice and IoU are logged, scored on masks of mixed sizes."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import yaml
from cli_runner import run_cli
from PIL import Image


def write_membranes(root: Path, n_train: int = 24, n_val: int = 6) -> None:
    """Bright discs (the foreground, 255 in the mask) on a dark noisy background; validation images of mixed sizes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            h, w = (32, 32) if split == "train" else ((40, 28), (24, 36), (32, 32))[i % 3]
            ys, xs = np.mgrid[0:h, 0:w]
            mask = np.zeros((h, w), dtype=np.uint8)
            for _ in range(3):
                cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, 8)
                mask[(ys - cy) ** 2 + (xs - cx) ** 2 <= r * r] = 255
            pixels = np.clip(40 + rng.normal(0, 15, (h, w)) + (mask > 0) * 150, 0, 255).astype(np.uint8)
            for folder, array in (("images", np.stack([pixels] * 3, -1)), ("masks", mask)):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / folder / f"{i:03d}.png")


def test_binary_0_255_masks_train_from_the_documented_options_and_log_the_foreground_dice(tmp_path: Path) -> None:
    write_membranes(tmp_path / "membranes")
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "em"},
            },
        },
        "model": {
            "class_path": "lit_finetune.SegmentationModule",
            "init_args": {
                "task": "binary",
                "backbone": "mobilenet_v3_large",
                "decoder_channels": [16, 16, 8, 8],
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
            },
        },
        "data": {
            "class_path": "lit_finetune.SegmentationDataModule",
            "init_args": {"root": str(tmp_path / "membranes"), "image_size": 32, "batch_size": 8, "num_workers": 0},
        },
        "batchnorm": {"momentum": 0.3},  # the fix the BatchNorm warning names for 9 training batches
    }
    path = tmp_path / "em.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    env.update({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})  # a checkout's code first
    fit = run_cli(["fit", "--config", str(path)], cwd=tmp_path, env=env, timeout=300)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert "ignore_index" not in fit.stderr  # no pixel is taken for unlabelled
    rows = list(csv.DictReader((tmp_path / "runs" / "em" / "version_0" / "metrics.csv").open()))
    epochs = [row for row in rows if row.get("val/dice_fg")]
    assert len(epochs) == 3 and {"val/iou_fg", "val/miou", "val/dice"} <= set(epochs[-1])
    dice_fg, iou_fg = float(epochs[-1]["val/dice_fg"]), float(epochs[-1]["val/iou_fg"])
    assert dice_fg > 0.5 and abs(iou_fg - dice_fg / (2 - dice_fg)) < 1e-4  # IoU = Dice / (2 - Dice) for one class
    saved = yaml.safe_load((tmp_path / "runs" / "em" / "version_0" / "config.yaml").read_text())
    validate = run_cli(
        ["validate", "--config", str(tmp_path / "runs" / "em" / "version_0" / "config.yaml"), "--ckpt_path", "last"],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert validate.returncode == 0 and "task" not in saved["data"]["init_args"], validate.stderr[-3000:]

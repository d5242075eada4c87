"""configs/segmentation_quickstart.yaml through the command line: fit, then predict writes palette masks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from cli_runner import run_cli
from PIL import Image

from lit_finetune.data.masks import default_palette
from lit_finetune.data.segmentation_demo import write_digit_segmentation

ROOT = Path(__file__).resolve().parents[2]

FOREGROUND_IOU_FLOOR = 0.3


def test_segmentation_quickstart_fits_and_predicts_masks_at_the_image_size(tmp_path: Path) -> None:
    data = write_digit_segmentation(tmp_path / "digits_seg", n_train=48, n_val=4)  # the demo, small
    config = ROOT / "configs" / "segmentation_quickstart.yaml"
    common = [
        "--config",
        str(config),
        "--data.init_args.root",
        str(data),
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.image_size",
        "32",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    env = {
        "OMP_NUM_THREADS": "1",
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    # 36 steps: the small-data BatchNorm fix the fit's warning names (mobilenet_v3's momentum 0.01 would leave the
    # running statistics at their initial values, and every pixel would be predicted as background in eval mode).
    fit = run_cli(["fit", *common, "--trainer.max_epochs", "3", "--batchnorm.momentum", "0.3"], cwd=tmp_path, env=env, timeout=240)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    run = tmp_path / "runs" / "segmentation_quickstart" / "version_0"
    assert len(list((run / "checkpoints").glob("epoch*-miou*.ckpt"))) == 1

    predict = run_cli(["predict", *common, "--ckpt_path", "best"], cwd=tmp_path, env=env, timeout=240)
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    masks = sorted((run / "predict" / "best" / "masks").glob("*.png"))
    assert [m.name for m in masks] == [f"{i:05d}.png" for i in range(4)]  # the validation images, by name
    for mask in masks:
        png = Image.open(mask)
        assert png.mode == "P" and png.size == (64, 64)  # the image's size, not the 32 px input
        assert png.getpalette()[: 3 * 11] == [v for color in default_palette(11) for v in color]
        assert np.asarray(png).max() <= 10
        overlay = Image.open(run / "predict" / "best" / "masks" / "overlays" / mask.name)
        assert overlay.mode == "RGB" and overlay.size == (64, 64)
    # A quality floor, counted here from the written masks: digits (any class) against background. Predicting all
    # background scores 0; the short run finds the digits' pixels.
    predicted = np.stack([np.asarray(Image.open(m)) > 0 for m in masks])
    true = np.stack([np.asarray(Image.open(next((data / "val" / "masks").glob(m.stem + ".*")))) for m in masks])
    found, labelled = predicted & (true > 0) & (true != 255), (true > 0) & (true != 255)
    assert found.sum() / (predicted | labelled).sum() >= FOREGROUND_IOU_FLOOR

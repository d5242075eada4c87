"""``--model.backbone timm/<name>`` through the command line: the quickstarts with a timm classifier and encoder, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from lit_finetune.data.segmentation_demo import write_digit_segmentation

pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[2]


def _fit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    if "PYTHONPATH" in os.environ:  # a checkout on the path wins over the installed package, as in the caller
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    common = [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        "1",
    ]
    return run_cli(["fit", *args, *common], cwd=tmp_path, env=env, timeout=240)


def test_quickstart_with_a_timm_backbone(tmp_path: Path, image_folder: Path) -> None:
    config = ROOT / "configs" / "quickstart.yaml"
    fit = _fit(
        tmp_path,
        "--config",
        str(config),
        "--model.backbone",
        "timm/convnext_atto",
        "--data.root",
        str(image_folder),
        "--data.demo",
        "null",
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
    )
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    ckpt = next((tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints").glob("last.ckpt"))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"] == "timm/convnext_atto"
    assert any(k.startswith("backbone.stages.3.blocks.") for k in checkpoint["state_dict"])  # timm's module names
    # The data module took its normalization from convnext_atto's pretrained_cfg, and the model got it from the data.
    assert tuple(checkpoint["hyper_parameters"]["image_mean"]) == pytest.approx((0.485, 0.456, 0.406))


def test_segmentation_quickstart_with_a_timm_encoder(tmp_path: Path) -> None:
    data = write_digit_segmentation(tmp_path / "digits_seg", n_train=8, n_val=4)
    config = ROOT / "configs" / "segmentation_quickstart.yaml"
    fit = _fit(
        tmp_path,
        "--config",
        str(config),
        "--model.init_args.backbone",
        "timm/resnet10t",
        "--data.init_args.root",
        str(data),
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.image_size",
        "32",
    )
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    checkpoint = torch.load(
        next((tmp_path / "runs" / "segmentation_quickstart" / "version_0" / "checkpoints").glob("last.ckpt")), weights_only=True
    )
    assert any(k.startswith("backbone.model.layer4.") for k in checkpoint["state_dict"])


def test_unknown_timm_name_is_a_short_error(tmp_path: Path, image_folder: Path) -> None:
    fit = _fit(
        tmp_path,
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--model.backbone",
        "timm/convnext_atoo",
        "--data.root",
        str(image_folder),
        "--data.demo",
        "null",
    )
    assert fit.returncode == 2
    assert "Unknown timm backbone 'timm/convnext_atoo'. Did you mean: timm/convnext_atto" in fit.stderr
    assert "Traceback" not in fit.stderr

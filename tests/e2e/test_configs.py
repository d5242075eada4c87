"""Every shipped config runs through the CLI for a few steps on tiny data, so no recipe in README rots.

Only the data and the run length are overridden (root, image sizes, batch size, one epoch of two
batches, CPU); the models, optimizers, schedulers and callbacks are the configs' own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from lit_finetune.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def overrides(tmp_path: Path, data_root: Path) -> list[str]:
    """Tiny data and a short run; the configs' demo data sets are replaced by the test's image folder."""
    return [
        "--data.root",
        str(data_root),
        "--data.demo",
        "null",
        "--data.image_size",
        "32",
        "--data.resize_size",
        "32",
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]


# (config files, extra arguments). The list is explicit so that a new config is added here on purpose.
CASES = {
    "hymenoptera_finetune": (["hymenoptera_finetune.yaml"], ["--model.weights", "null"]),  # IMAGENET1K_V1 needs internet
    "hymenoptera_scratch": (["hymenoptera_scratch.yaml"], []),
    "diagnostics": (["diagnostics.yaml"], []),
    "linear_probe": (["linear_probe.yaml"], []),
    "unfreeze_schedule": (["unfreeze_schedule.yaml"], []),
    # 16-mixed is GPU-only in Lightning; on CPU the same overlay runs with bf16-mixed.
    "amp": (["quickstart.yaml", "amp.yaml"], ["--trainer.precision", "bf16-mixed"]),
    "overfit_one_batch": (["quickstart.yaml", "overfit_one_batch.yaml"], []),
    # The overlay warms up for 2 epochs: three epochs of two batches run the warm-up and the cosine.
    "small_data": (["quickstart.yaml", "recipes/small_data.yaml"], ["--trainer.max_epochs", "3"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_config_fits_a_few_steps(name: str, tmp_path: Path, image_folder: Path, one_thread) -> None:
    files, extra = CASES[name]
    configs = [arg for f in files for arg in ("--config", str(CONFIGS / f))]
    cli = build_cli(["fit", *configs, *overrides(tmp_path, image_folder), *extra])
    assert cli.trainer.state.finished and cli.trainer.global_step >= 1
    # overfit_one_batch validates every 10 epochs only: its one epoch logs the training loss alone.
    metric = "train/loss" if name == "overfit_one_batch" else "val/loss"
    assert torch.isfinite(cli.trainer.callback_metrics[metric])
    assert cli.datamodule.class_names == ["cat", "dog"]
    if name == "linear_probe":
        assert not any(p.requires_grad for p in cli.model.backbone.parameters())
    if name == "small_data":
        assert cli.datamodule.hparams.augment == "trivialaugment" and cli.datamodule.mixer is not None
        assert cli.model.hparams.label_smoothing == 0.1 and cli.trainer.global_step == 6
    if name == "amp":
        assert cli.trainer.precision == "bf16-mixed" and cli.trainer.gradient_clip_val == 1.0


@pytest.mark.parametrize("name", ["quickstart", "ddp"])
def test_config_through_the_command(name: str, tmp_path: Path, image_folder: Path) -> None:
    configs = ["--config", str(CONFIGS / "quickstart.yaml")]
    extra: list[str] = []
    if name == "ddp":
        # ddp.yaml is an overlay: its DDPStrategy runs here as one CPU process (gloo), in its own process.
        configs += ["--config", str(CONFIGS / "ddp.yaml")]
        extra = ["--trainer.devices", "1"]
    result = run_cli(["fit", *configs, *overrides(tmp_path, image_folder), *extra], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert checkpoints, "no checkpoint written"
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 2

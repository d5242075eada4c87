"""The command line end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_runner import run_cli
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_finetune import keys
from lit_finetune.cli import build_cli


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def write_config(tmp_path: Path, data_root: Path, **trainer) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lit_finetune.cli.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "e2e", "default_hp_metric": False},
            },
            **trainer,
        },
        "model": {"backbone": "resnet18", "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}},
        "data": {"root": str(data_root), "image_size": 32, "resize_size": 32, "batch_size": 8, "num_workers": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run_cli([*args], cwd=cwd, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_fit_predict_validate(tmp_path: Path, image_folder: Path) -> None:
    config = write_config(tmp_path, image_folder)
    run("fit", "--config", str(config), cwd=tmp_path)

    version = tmp_path / "runs" / "e2e" / "version_0"
    ckpts = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert {"last.ckpt", "best.ckpt"} <= set(ckpts) and len(ckpts) == 3, ckpts  # + the best one under its metric name
    best = next(version / "checkpoints" / name for name in ckpts if name.startswith("epoch"))
    logged = scalars(version)
    assert len(logged["train/loss"]) == 4  # 16 images / batch 8 * 2 epochs, one value per step
    assert len(logged["val/acc"]) == 2 and {"val/loss", "val/f1", "train/loss_epoch", "train/acc"} <= set(logged)
    # One LR, momentum and weight decay chart for a plain recipe, in one section after the metrics.
    optim = sorted(tag for tag in logged if "lr-AdamW" in tag)
    assert optim == ["zz-optim/lr-AdamW/all", "zz-optim/lr-AdamW/all-momentum", "zz-optim/lr-AdamW/all-weight_decay"], optim

    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"] == ["cat", "dog"]
    assert ckpt["class_names"] == ["cat", "dog"]
    best_epoch = ckpt["epoch"]
    best_acc = dict(logged["val/acc"])[ckpt["global_step"] - 1]
    assert f"acc{best_acc:.4f}" in best.name and best_epoch in (0, 1)

    preds = tmp_path / "preds.csv"
    run("predict", "--config", str(config), "--ckpt_path", str(best), "--predictions.output_path", str(preds), cwd=tmp_path)
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 8
    assert {r["pred_class"] for r in rows} <= {"cat", "dog"}
    assert all(0.5 <= float(r["probability"]) <= 1.0 and Path(r["path"]).is_file() for r in rows)

    run("validate", "--config", str(config), "--ckpt_path", str(best), cwd=tmp_path)
    validated = scalars(version / "validate")["val/acc"]  # beside the checkpoint's run, no new version folder
    assert sorted(p.name for p in version.parent.iterdir()) == ["version_0"]
    assert validated[0][1] == pytest.approx(best_acc, abs=1e-6)


def test_python_cli_py_runs_the_same_cli(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "cli.py"), "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--model.backbone" in result.stdout and "--checkpoint.monitor" in result.stdout


def test_overfit_one_batch_drives_the_loss_to_zero(tmp_path: Path, image_folder: Path) -> None:
    config = write_config(tmp_path, image_folder)
    root = Path(__file__).resolve().parents[2]
    cli = build_cli(["fit", "--config", str(config), "--config", str(root / "configs" / "overfit_one_batch.yaml")])
    assert cli.trainer.overfit_batches == 1
    assert cli.trainer.callback_metrics["train/loss"] < 0.05


def test_bf16_mixed_fit_runs_on_cpu(tmp_path: Path, image_folder: Path) -> None:
    config = write_config(tmp_path, image_folder, max_epochs=1)
    root = Path(__file__).resolve().parents[2]
    args = ["--config", str(config), "--config", str(root / "configs" / "amp.yaml"), "--trainer.precision", "bf16-mixed"]
    cli = build_cli(args, run=False)
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.gradient_clip_val == 1.0  # amp.yaml's clipping
    cli.trainer.gradient_clip_val = 1e-3  # small enough that every step must be clipped
    seen = AmpProbe()
    cli.trainer.callbacks.append(seen)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    assert seen.logit_dtypes == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert seen.unclipped and min(seen.unclipped) > 1e-3  # gradients that needed clipping ...
    assert len(seen.clipped) == len(seen.unclipped) and max(seen.clipped) <= 1e-3 * 1.001  # ... were clipped before the step


class AmpProbe(Callback):
    """Records the logits' dtype, and the gradient norm before clipping and when the optimizer steps."""

    def __init__(self) -> None:
        self.logit_dtypes, self.unclipped, self.clipped = set(), [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logit_dtypes.add(outputs[keys.LOGITS].dtype)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.unclipped.append(grad_norm(pl_module))

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(
            lambda *args: self.clipped.append(grad_norm(pl_module))
        )  # the gradients the step used


def grad_norm(module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None])))


def test_lr_find_option_sets_the_head_lr_before_fitting(tmp_path: Path, image_folder: Path) -> None:
    # 2 batches an epoch: the sweep's 24 steps need 12 epochs; the fit that follows stops after 2 steps.
    config = write_config(tmp_path, image_folder, max_epochs=14, max_steps=2)
    args = ["--lr_find", "true", "--lr_find_steps", "24", "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false"]
    cli = build_cli(["fit", "--config", str(config), *args])
    assert cli.model.head_lr is not None and 1e-6 <= cli.model.head_lr <= 1.0
    assert (Path(cli.trainer.log_dir) / "lr_find.png").is_file()
    # The suggestion is the head group's LR for the training that followed.
    head_groups = [g for g in cli.trainer.optimizers[0].param_groups if g["lr_scale"] == 1.0]  # "all" in this plain recipe
    assert head_groups and all(g["lr"] == pytest.approx(cli.model.head_lr) for g in head_groups)


@pytest.mark.parametrize(
    ("lines", "expected_line", "message"),
    [
        (["model:", "  backbone: resnet18", "  head_dropuot: 0.2", "data:", "  root: {root}"], 3, "model.head_dropuot"),
        (["model:", "  backbone: resnet18", "data:", "  root: {root}", "  batch_size: many"], 5, "data.batch_size"),
        (
            [
                "model:",
                "  lr_scheduler:",
                "    class_path: torch.optim.lr_scheduler.StepLR",
                "    init_args:",
                "      gamma: 0.5",
                "data:",
                "  root: {root}",
            ],
            2,
            "model.lr_scheduler",
        ),
    ],
)
def test_config_errors_point_at_the_yaml_line(tmp_path: Path, image_folder: Path, capsys, lines, expected_line, message) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("\n".join(lines).format(root=image_folder) + "\n")
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(config)])
    err = capsys.readouterr().err
    assert message in err and f"in {config}:{expected_line}" in err

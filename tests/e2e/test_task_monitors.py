"""The checkpoint monitors the task's own metric when the config names none (multilabel ``val/map``, binary
``val/auroc``), and a monitored metric the model does not log stops the run before training, with exit status 2
and one message that lists the logged metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_finetune.callbacks.resumable_checkpoint import MonitorNotLoggedError, ResumableModelCheckpoint
from lit_finetune.cli import main
from lit_finetune.data.demo import write_digit_pairs

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:No positive")]


def write_config(path: Path, task: str, data: list[str]) -> Path:
    """A config with a model and data section, and no ``checkpoint`` section."""
    lines = ["model:", f"  task: {task}", "  backbone: resnet18", "  weights: null", "data:", *data]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_args(tmp_path: Path, config: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(config),
        "--data.image_size",
        "32",
        "--data.resize_size",
        "32",
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]


def checkpoints(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "lit_finetune" / "version_0" / "checkpoints"


def multilabel_config(tmp_path: Path) -> Path:
    root = write_digit_pairs(tmp_path / "pairs", n_train=16, n_val=8)
    data = [f"  root: {root}", f"  labels_csv: {root / 'labels.csv'}", "  split_column: split", "  train_augment: false"]
    return write_config(tmp_path / "multilabel.yaml", "multilabel", data)


@pytest.mark.parametrize("task, metric", [("multilabel", "map"), ("binary", "auroc")])
def test_a_config_without_checkpoint_section_keeps_the_best_task_metric(task: str, metric: str, tmp_path: Path, image_folder: Path) -> None:
    config = (
        multilabel_config(tmp_path)
        if task == "multilabel"
        else write_config(tmp_path / "binary.yaml", "binary", [f"  root: {image_folder}"])
    )
    main(run_args(tmp_path, config))
    folder = checkpoints(tmp_path)
    assert list(folder.glob(f"epoch0?-{metric}*.ckpt")), sorted(p.name for p in folder.iterdir())
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # two epochs ran
    state = next(v for k, v in last["callbacks"].items() if k.startswith("ResumableModelCheckpoint"))
    assert state["monitor"] == f"val/{metric}"


def test_a_monitor_that_is_not_logged_stops_before_training(tmp_path: Path, capsys) -> None:
    args = run_args(tmp_path, multilabel_config(tmp_path)) + ["--checkpoint.monitor", "val/acc"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint.monitor 'val/acc' is not logged" in err and "val/map" in err and "val/loss" in err
    assert "Traceback" not in err
    assert not (checkpoints(tmp_path) / "last.ckpt").exists()  # found by the sanity check, before any training


class FakeTrainer:
    pass


def test_a_metric_of_another_stage_is_checked_at_the_first_save() -> None:
    checkpoint = ResumableModelCheckpoint(monitor="train/loss_epoch")
    # The sanity check logs validation metrics only: a training metric may still come.
    checkpoint._check_monitor(FakeTrainer(), {"val/loss": torch.tensor(1.0)}, final=False)
    with pytest.raises(MonitorNotLoggedError, match="val/loss"):
        checkpoint._check_monitor(FakeTrainer(), {"val/loss": torch.tensor(1.0)}, final=True)
    checkpoint._check_monitor(FakeTrainer(), {"train/loss_epoch": torch.tensor(1.0)}, final=True)

"""A new user's first hour: a clean first run, best/last checkpoints by name, short errors, README true."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

from cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.accelerator",
    "cpu",
    "--trainer.enable_progress_bar",
    "false",
    "--data.demo",
    "null",
    "--data.batch_size",
    "8",
    "--data.num_workers",
    "0",
    "--model.lr_scheduler.init_args.T_max",
    "1",
]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIT_FINETUNE_DEBUG", None)
    return run_cli(list(args), cwd=cwd, env=env)


def quickstart(data: Path) -> list[str]:
    return ["--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "--data.root", str(data)]


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Warning" in line or "warn" in line.lower()]


def test_fresh_fit_is_quiet_and_best_and_last_checkpoints_work_by_name(tmp_path: Path, image_folder: Path) -> None:
    fit = cli("fit", *quickstart(image_folder), cwd=tmp_path)
    output = fit.stdout + fit.stderr
    assert fit.returncode == 0, output[-3000:]
    assert "ckpt_path" not in output, warnings_in(output)
    assert "Tip:" not in output and "LeafSpec" not in output, output[-3000:]  # foreign noise filtered by its text
    run = tmp_path / "runs" / "quickstart" / "version_0"
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    (metric_named,) = [p for p in (run / "checkpoints").glob("epoch*.ckpt")]
    assert best.read_bytes() == metric_named.read_bytes()
    # A quality floor: one epoch tells the two colour classes apart (chance: 0.5).
    assert float(re.search(r"acc(\d\.\d+)\.ckpt", metric_named.name).group(1)) >= 0.9, metric_named.name

    validate = cli("validate", *quickstart(image_folder), "--ckpt_path", str(best), cwd=tmp_path)
    assert validate.returncode == 0, (validate.stdout + validate.stderr)[-3000:]
    assert (run / "validate").is_dir() and any((run / "validate").glob("events.out.tfevents.*"))

    # predict writes into a folder named for the checkpoint: best and last do not overwrite each other, Lightning's
    # "dirpath has changed" warning is not shown, and no TensorBoard run is made (predict logs nothing).
    for name in ("best", "last"):
        predict = cli("predict", *quickstart(image_folder), "--ckpt_path", name, cwd=tmp_path)
        assert predict.returncode == 0, (predict.stdout + predict.stderr)[-3000:]
        assert "dirpath has changed" not in predict.stdout + predict.stderr
        rows = list(csv.DictReader((run / "predict" / name / "predictions.csv").open()))
        assert len(rows) == 8 and {r["pred_class"] for r in rows} <= {"cat", "dog"}
    assert sorted(p.name for p in (run / "predict").iterdir()) == ["best", "last"]
    assert not list((run / "predict").rglob("events.out.tfevents.*")) and not list((run / "predict").rglob("hparams.yaml"))
    # Evaluating wrote beside the run; no new run folder, even for a call that fails.
    failed = cli("validate", *quickstart(image_folder), "--ckpt_path", str(run / "checkpoints" / "nope.ckpt"), cwd=tmp_path)
    assert failed.returncode == 2 and "nope.ckpt" in failed.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def assert_short_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    error = result.stderr.strip().splitlines()
    assert len(error) <= 10, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def test_missing_data_folder_is_a_short_error(tmp_path: Path) -> None:
    result = cli("fit", *quickstart(tmp_path / "no_such_folder"), cwd=tmp_path)
    assert_short_error(result, "no_such_folder", "data.root")


def test_unknown_backbone_is_a_short_error_with_the_closest_names(tmp_path: Path, image_folder: Path) -> None:
    result = cli("fit", *quickstart(image_folder), "--model.backbone", "resnet1", cwd=tmp_path)
    assert_short_error(result, "Unknown backbone 'resnet1'", "resnet18")


def test_debug_switch_shows_the_traceback(tmp_path: Path, image_folder: Path) -> None:
    result = cli("fit", *quickstart(image_folder), "--model.backbone", "resnet1", "--debug", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_misspelt_key_names_file_line_and_the_closest_key(tmp_path: Path, image_folder: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(f"data:\n  root: {image_folder}\n  batch_sise: 4\n")
    result = cli("fit", "--config", str(config), cwd=tmp_path)
    assert_short_error(result, f"{config}:3", "did you mean `data.batch_size`?")

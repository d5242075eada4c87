"""Where the command line writes: no checkpoint from fast_dev_run, help for the selected classes, TensorBoard order."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import yaml

from lit_finetune.callbacks.resumable_checkpoint import ResumableModelCheckpoint
from lit_finetune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def compare_tags(a: str, b: str) -> int:
    """TensorBoard's ``compareTagNames`` (tensorboard/webapp/metrics/views/utils.ts), written out in Python.

    Runs of digits compare as numbers; a break character (``/`` or a digit) sorts before any other character.
    """
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if a[i].isdigit() and b[j].isdigit():
            i0, j0 = i, j
            i, j = number_end(a, i + 1), number_end(b, j + 1)
            x, y = float(a[i0:i]), float(b[j0:j])
            if x != y:
                return -1 if x < y else 1
            continue
        a_break, b_break = a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit()
        if a_break and not b_break:
            return -1
        if b_break and not a_break:
            return 1
        if not a_break and a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def number_end(s: str, i: int) -> int:
    """End of the number starting before ``i`` (natural, real, exponent), as TensorBoard's ``consumeNumber``."""
    state = "natural"
    while i < len(s):
        c = s[i]
        if state == "natural" and c == ".":
            state = "real"
        elif state in ("natural", "real") and c in "eE":
            state = "sign"
        elif state == "sign" and (c.isdigit() or c in "+-"):
            state = "exponent"
        elif not c.isdigit() or state == "sign":
            break
        i += 1
    return i


def tensorboard_order(tags: list[str]) -> list[str]:
    """The section names of TensorBoard's Time Series view, top to bottom: tags sorted by :func:`compare_tags`,
    grouped by the part before the first ``/``, each section where its first tag is (``groupCardIdWithMetdata``)."""
    sections: list[str] = []
    for tag in sorted(tags, key=functools.cmp_to_key(compare_tags)):
        section = tag.split("/", 1)[0]
        if section not in sections:
            sections.append(section)
    return sections


def test_tensorboard_order_helper_follows_tensorboards_rules() -> None:
    assert tensorboard_order(["val/acc", "epoch", "best_worst/val/worst", "train/loss"]) == ["best_worst", "epoch", "train", "val"]
    assert tensorboard_order(["a10/x", "a/x", "a2/x"]) == ["a2", "a10", "a"]  # numbers by value; "/" after a digit run
    assert tensorboard_order(["zz-optim/lr", "val/loss", "train/loss"]) == ["train", "val", "zz-optim"]


def test_fast_dev_run_writes_no_checkpoint(tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--data.root",
            str(image_folder),
            "--data.demo",
            "null",
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "8",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert not list(tmp_path.rglob("*.ckpt")), list(tmp_path.rglob("*.ckpt"))


def test_help_lists_the_options_of_the_class_a_config_selects(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs" / "segmentation_quickstart.yaml"), "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--model.decoder_channels" in out and "--data.eval_size" in out, out[-2000:]
    with pytest.raises(SystemExit) as done:
        main(["fit", "--model.help", "lit_finetune.SegmentationModule"])
    assert done.value.code == 0
    assert "decoder_channels" in capsys.readouterr().out


def test_evaluation_restores_no_checkpoint_folder_state(tmp_path: Path) -> None:
    state = ResumableModelCheckpoint(dirpath=str(tmp_path / "a")).state_dict() | {"best_model_path": "a/best.ckpt"}
    for stage, warns in (("predict", False), ("validate", False), ("fit", True)):
        checkpoint = ResumableModelCheckpoint(dirpath=str(tmp_path / "b"))
        checkpoint._stage = stage  # what setup() records
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            checkpoint.load_state_dict(state)
        assert any("dirpath has changed" in str(w.message) for w in caught) == warns, stage
        assert checkpoint.best_model_path == "a/best.ckpt"


def test_tensorboard_shows_the_metrics_before_the_diagnostics(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = yaml.safe_load((ROOT / "configs" / "diagnostics.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("BestWorstSamples"):
            callback["init_args"]["k"] = 2
        if callback["class_path"].endswith("GradCAM"):
            callback["init_args"]["num_images"] = 2
        if callback["class_path"].endswith("NanGuard"):
            callback["init_args"]["detect_anomaly"] = False  # slow, and beside the point here
    path = tmp_path / "diagnostics.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(path),
            "--data.root",
            str(image_folder),
            "--data.demo",
            "null",
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "8",
            "--trainer.max_epochs",
            "1",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    events = EventAccumulator(str(tmp_path / "runs" / "diagnostics" / "version_0"), size_guidance={"tensors": 0})
    events.Reload()
    tags = [tag for kind, names in events.Tags().items() if isinstance(names, list) for tag in names]
    assert {"zz-best_worst/val/worst", "zz-gradcam/val", "zz-grad/global_norm", "zz-progress/epoch"} <= set(tags), tags
    sections = tensorboard_order(tags)
    # The metrics first (train/ holds the training loss and metrics, val/ the validation metrics), every diagnostic after
    # them; Lightning's `epoch` scalar is no section of its own.
    assert sections[:2] == ["train", "val"], sections
    assert all(section.startswith("zz-") for section in sections[2:]), sections

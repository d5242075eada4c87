"""configs/multilabel_quickstart.yaml through the command line: fit, then predict writes label sets."""

from __future__ import annotations

import csv
from pathlib import Path

from cli_runner import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_finetune.data.demo import write_digit_pairs

ROOT = Path(__file__).resolve().parents[2]

MAP_ABOVE_CHANCE = 0.15


def test_multilabel_quickstart_fits_and_predicts_label_sets(tmp_path: Path) -> None:
    data = write_digit_pairs(tmp_path / "digit_pairs", n_train=48, n_val=16)  # the demo, small
    config = ROOT / "configs" / "multilabel_quickstart.yaml"
    common = [
        "--config",
        str(config),
        "--data.root",
        str(data),
        "--data.batch_size",
        "16",
        "--data.num_workers",
        "0",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    fit = run_cli(["fit", *common, "--trainer.max_epochs", "1"], cwd=tmp_path, timeout=240)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]

    version = tmp_path / "runs" / "multilabel_quickstart" / "version_0"
    events = EventAccumulator(str(version), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/map", "val/f1_micro", "val/f1_macro", "val/exact_match", "val/loss", "train/loss_epoch"} <= tags, tags
    assert {f"val/ap/{d}" for d in "0123456789"} <= tags and {f"val/f1/{d}" for d in "0123456789"} <= tags
    best = next(p for p in (version / "checkpoints").glob("epoch*-map*.ckpt"))
    # A quality floor: a ranking by chance has an average precision near each label's share of the validation images.
    val_rows = [row for row in csv.DictReader((data / "labels.csv").open()) if row["split"] == "val"]
    shares = [sum(str(d) in row["labels"].split() for row in val_rows) / len(val_rows) for d in range(10)]
    chance = sum(share for share in shares if share > 0) / sum(share > 0 for share in shares)
    val_map = events.Scalars("val/map")[-1].value
    assert val_map >= chance + MAP_ABOVE_CHANCE, (val_map, chance)

    preds = tmp_path / "preds.csv"
    run = run_cli(
        ["predict", *common, "--ckpt_path", str(best), "--predictions.output_path", str(preds), "--model.threshold", "0.05"],
        cwd=tmp_path,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 16 and set(rows[0]) >= {"path", "labels", "probabilities"}
    # A low threshold: rows hold several labels, each with its probability, all above the threshold.
    assert any(len(r["labels"].split()) > 1 for r in rows)
    for r in rows:
        labels, probs = r["labels"].split(), [float(p) for p in r["probabilities"].split()]
        assert len(labels) == len(probs) and set(labels) <= set("0123456789") and all(p > 0.05 for p in probs)

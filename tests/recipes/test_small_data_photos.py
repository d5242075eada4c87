"""The small-data overlay trains on real photographs through the CLI, stacked on each config it claims to compose with.

Reads a few of the cat/dog photographs of ``../shared/data/cats_dogs`` (relative to the repository root, or
``$LIT_FINETUNE_CATS_DOGS``) where they are, through a labels CSV written to the test's folder; skips when
they are absent. Only the data and the run length are overridden: the recipe is the overlay's own.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EMAWeightAveraging

from lit_finetune.cli import build_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PHOTOS = Path(os.environ.get("LIT_FINETUNE_CATS_DOGS") or REPO.parent / "shared" / "data" / "cats_dogs")
OVERLAY = CONFIGS / "recipes" / "small_data.yaml"
# The configs README says the overlay stacks on: the classification quickstarts and the seed recipe.
BASES = ["quickstart.yaml", "multilabel_quickstart.yaml", "hymenoptera_scratch.yaml"]

pytestmark = pytest.mark.skipif(
    not (PHOTOS / "cat").is_dir() or not (PHOTOS / "dog").is_dir(),
    reason=f"the cat/dog photographs are not at {PHOTOS} (set LIT_FINETUNE_CATS_DOGS to their folder)",
)


def write_labels(path: Path, per_class: int = 4) -> Path:
    """A CSV of the first ``2 * per_class`` photographs of each class: half train, half val."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "labels", "split"])
        for name in ("cat", "dog"):
            files = sorted(p.name for p in (PHOTOS / name).iterdir() if p.suffix.lower() == ".jpg")[: 2 * per_class]
            writer.writerows((f"{name}/{f}", name, "train" if i < per_class else "val") for i, f in enumerate(files))
    return path


def fit_args(base: str, labels: Path, tmp_path: Path) -> list[str]:
    """``fit`` with the base config, the overlay, the photographs and a run of two epochs of two batches."""
    return [
        "fit", "--config", str(CONFIGS / base), "--config", str(OVERLAY),
        "--data.root", str(PHOTOS), "--data.labels_csv", str(labels), "--data.split_column", "split", "--data.demo", "null",
        "--data.image_size", "32", "--data.resize_size", "36", "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.num_sanity_val_steps", "0", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip


@pytest.mark.parametrize("base", BASES)
def test_overlay_trains_on_photographs(base: str, tmp_path: Path, one_thread) -> None:
    extra = ["--data.train_augment", "true"] if base == "multilabel_quickstart.yaml" else []  # see the test below
    cli = build_cli([*fit_args(base, write_labels(tmp_path / "labels.csv"), tmp_path), *extra])
    overlay = yaml.safe_load(OVERLAY.read_text())
    assert cli.datamodule.class_names == ["cat", "dog"] and len(cli.datamodule.train_samples) == 8
    # Two epochs of two batches: the overlay's schedule, EMA and loss ran on every step.
    assert cli.trainer.state.finished and cli.trainer.global_step == 4
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    # The overlay's options, not the base config's, are the ones in force.
    for key, value in overlay["data"].items():
        assert cli.datamodule.hparams[key] == (tuple(value) if isinstance(value, list) else value), key
    assert cli.model.hparams.label_smoothing == overlay["model"]["label_smoothing"]
    assert sum(isinstance(c, EMAWeightAveraging) for c in cli.trainer.callbacks) == 1
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer).__name__ == overlay["model"]["optimizer"]["class_path"].rsplit(".", 1)[1]


def test_overlay_on_the_multilabel_quickstart_needs_random_crops(tmp_path: Path) -> None:
    """multilabel_quickstart.yaml trains without random crops (a crop can cut a digit out); the overlay's augmentation
    needs them, so the stack stops before training with a message that names the option."""
    with pytest.raises(ValueError, match="train_augment: true"):
        build_cli(fit_args("multilabel_quickstart.yaml", write_labels(tmp_path / "labels.csv"), tmp_path))

"""Fixtures of the reliability tests: a tiny data set and one short training run through the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_helpers import write_config, write_dataset  # noqa: E402


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """3 classes, 4 training and 3 validation 32 px PNGs each."""
    return write_dataset(tmp_path_factory.mktemp("reliability") / "data", train_per_class=4, val_per_class=3)


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory, dataset) -> dict:
    """``lit-finetune fit`` for 1 of 2 epochs (resnet18, deterministic CPU); its config and run folder."""
    from lit_finetune.cli import main

    tmp = tmp_path_factory.mktemp("one_epoch")
    config = write_config(tmp / "config.yaml", dataset, tmp / "runs", max_epochs=2)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    return {"config": config, "runs": tmp / "runs", "ckpt": tmp / "runs" / "run" / "version_0" / "checkpoints" / "last.ckpt"}

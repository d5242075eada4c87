"""``lit-finetune optimize`` to ``s3://`` (a real S3 HTTP server on localhost), then ``fit``/``validate`` from there.

The quickstart configs run on tiny data, once from folders and once from the bucket, for the same steps; the folder
run's checkpoint then scores exactly the same on the streamed validation set as on the folder (the same samples,
decoded and transformed alike). A few steps of a model from scratch say nothing about quality by themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streaming_helpers import RecordSamples, TinyModel

from lit_finetune.cli import build_cli, main
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.data.shards import optimize_datamodule
from lit_finetune.data.streaming import StreamingDataModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHORT = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0"]


def run_args(tmp_path: Path, name: str, epochs: int) -> list[str]:
    return [
        *SHORT,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / name),
        "--seed_everything",
        "0",
    ]


def optimize(config: str, data: list[str], output: str) -> None:
    with pytest.raises(SystemExit) as done:
        main(["optimize", "--config", str(CONFIGS / config), *data, "--output", output, "--workers", "2"])
    assert done.value.code == 0


def metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}


def last_checkpoint(tmp_path: Path, name: str) -> str:
    return str(next((tmp_path / name).rglob("last.ckpt")))


def test_quickstart_from_s3_trains_and_scores_as_from_folders(s3_bucket: str, class_folder: Path, tmp_path: Path, one_thread):
    folder_data = ["--data.root", str(class_folder), "--data.demo", "null"]
    url = f"{s3_bucket}/quickstart"
    optimize("quickstart.yaml", folder_data, url)
    sizes = ["--data.batch_size", "8", "--data.num_workers", "0"]
    stream_data = ["--config", str(CONFIGS / "streaming.yaml"), "--data.init_args.input_dir", url]
    stream_sizes = ["--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0"]
    quickstart = ["--config", str(CONFIGS / "quickstart.yaml")]

    folder = build_cli(["fit", *quickstart, *folder_data, *sizes, *run_args(tmp_path, "folder", 2)])
    stream = build_cli(["fit", *quickstart, *stream_data, *stream_sizes, *run_args(tmp_path, "stream", 2)])
    assert isinstance(stream.datamodule, StreamingDataModule) and stream.model.hparams.class_names == ["cat", "dog"]
    assert stream.trainer.global_step == folder.trainer.global_step == 6  # 24 images, batches of 8, 2 epochs
    assert torch.isfinite(stream.trainer.callback_metrics["train/loss"]) and 0 <= metrics(stream)["val/acc"] <= 1

    # The folder run's final weights score the same on the stream as on the folder.
    check = build_cli(["validate", *quickstart, *stream_data, *stream_sizes, *SHORT, "--ckpt_path", last_checkpoint(tmp_path, "folder")])
    for name, value in metrics(folder).items():
        assert metrics(check)[name] == pytest.approx(value, abs=1e-5), name


def write_pairs(folder: Path, count: int, seed: int) -> None:
    """64 px images with a bright square of class 1 or 2 on a dark background, and their masks."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        mask = np.zeros((64, 64), dtype=np.uint8)
        y, x, c = *rng.integers(4, 32, size=2), rng.integers(1, 3)
        mask[y : y + 24, x : x + 24] = c
        pixels = np.stack([mask * 100, (mask == 2) * 200, np.full_like(mask, 30)], axis=-1).astype(np.uint8)
        for sub, array in (("images", pixels), ("masks", mask)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / sub / f"{i:03d}.png")


def test_segmentation_quickstart_from_s3_scores_as_from_folders(s3_bucket: str, tmp_path: Path, one_thread):
    root = tmp_path / "seg"
    write_pairs(root / "train", 8, seed=0), write_pairs(root / "val", 4, seed=1)
    (root / "classes.txt").write_text("background\nred\nyellow\n")
    url = f"{s3_bucket}/segmentation"
    folder_data = ["--data.init_args.root", str(root), "--data.init_args.demo", "null"]
    optimize("segmentation_quickstart.yaml", folder_data, url)
    common = [
        "--config",
        str(CONFIGS / "segmentation_quickstart.yaml"),
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
    ]
    common += ["--data.init_args.image_size", "32"]
    stream_data = ["--config", str(CONFIGS / "streaming_segmentation.yaml"), "--data.init_args.input_dir", url]

    folder = build_cli(["fit", *common, *folder_data, *run_args(tmp_path, "folder", 2)])
    stream = build_cli(["fit", *common, *stream_data, *run_args(tmp_path, "stream", 2)])
    assert stream.model.hparams.class_names == ["background", "red", "yellow"] and stream.trainer.global_step == 4
    assert stream.model.palette == folder.model.palette
    assert all(np.isfinite(v) for v in metrics(stream).values()) and "val/miou" in metrics(stream)
    check = build_cli(["validate", *common, *stream_data, *SHORT, "--ckpt_path", last_checkpoint(tmp_path, "folder")])
    for name, value in metrics(folder).items():
        assert metrics(check)[name] == pytest.approx(value, abs=1e-5), name


def test_resume_mid_epoch_from_s3(s3_bucket: str, class_folder: Path, tmp_path: Path):
    from lightning.pytorch import Trainer

    from lit_finetune.callbacks.interrupt_checkpoint import InterruptCheckpoint

    url = f"{s3_bucket}/resume"
    optimize_datamodule(ImageFolderDataModule(str(class_folder), num_workers=0), url, num_workers=2, chunk_bytes="16KB")

    def fit(recorder: RecordSamples, ckpt_path: str | None = None) -> None:
        data = StreamingDataModule(url, batch_size=4, num_workers=0, image_size=32, resize_size=32, cache_dir=str(tmp_path / "cache"))
        trainer = Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            callbacks=[recorder, InterruptCheckpoint(dirpath=str(tmp_path / "ckpt"))],
        )
        trainer.fit(TinyModel(), datamodule=data, ckpt_path=ckpt_path)

    first, second = RecordSamples(stop_after=3), RecordSamples()
    with pytest.raises(SystemExit):
        fit(first)
    fit(second, str(tmp_path / "ckpt" / "last-interrupted.ckpt"))
    assert len(first.seen) == 12 and sorted(i for _, i in first.seen + second.seen) == list(range(24))

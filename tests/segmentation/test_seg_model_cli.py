"""The command line with ``model.class_path: lit_finetune.SegmentationModule``: links, checkpoint monitor, fit/validate/predict."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from seg_data_helpers import write_split_root

from lit_finetune import FinetuneClassifier, ImageFolderDataModule, SegmentationModule
from lit_finetune.cli import build_cli, main, names_class_path

pytestmark = pytest.mark.usefixtures("one_thread")


def seg_config(tmp_path: Path, root: Path, **model) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "seg"},
            },
        },
        "model": {
            "class_path": "lit_finetune.SegmentationModule",
            "init_args": {"backbone": "resnet18", "decoder_channels": [8, 8, 8, 8], **model},
        },
        "data": {
            "class_path": "lit_finetune.SegmentationDataModule",
            "init_args": {
                "root": str(root),
                "batch_size": 2,
                "num_workers": 0,
                "image_size": 32,
                "class_names": ["bg", "a", "b"],
                "num_classes": 3,
            },
        },
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory) -> Path:
    return write_split_root(tmp_path_factory.mktemp("segdata"), num_classes=3)


def test_class_path_is_detected_in_configs_and_arguments(tmp_path, seg_root):
    assert names_class_path(["fit", "--config", str(seg_config(tmp_path, seg_root))])
    assert names_class_path(["fit", "--model.class_path", "lit_finetune.SegmentationModule"])
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"model": {"backbone": "resnet18"}}))
    assert not names_class_path(["fit", "--config", str(plain)])


def test_links_fill_the_segmentation_module_from_the_data(tmp_path, seg_root):
    cli = build_cli(["--config", str(seg_config(tmp_path, seg_root)), "--trainer.logger", "false"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, SegmentationModule)
    assert model.num_classes == data.num_classes == 3 and model.class_names == data.class_names
    assert model.image_mean == tuple(data.preprocessing.mean) and model.task.mode == data.task == "multiclass"
    assert data.hparams.backbone == "resnet18"  # linked from the model
    checkpoint = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ResumableModelCheckpoint")
    assert checkpoint.monitor == "val/miou" and "miou" in checkpoint.filename


def test_classification_configs_still_parse_without_class_path(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "images")
    config = tmp_path / "cls.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"backbone": "resnet18"}, "data": {"root": str(root), "image_size": 32, "val_fraction": 0.25}})
    )
    cli = build_cli(["--config", str(config), "--trainer.logger", "false"], run=False)
    assert type(cli.model) is FinetuneClassifier and type(cli.datamodule) is ImageFolderDataModule
    checkpoint = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ResumableModelCheckpoint")
    assert checkpoint.monitor == "val/acc"


def test_fit_then_validate_and_predict_through_the_cli(tmp_path, seg_root):
    config = seg_config(tmp_path, seg_root)
    cli = build_cli(["fit", "--config", str(config)])
    assert {"val/miou", "val/dice", "val/pixel_acc", "val/loss"} <= set(cli.trainer.callback_metrics)
    run = tmp_path / "runs" / "seg" / "version_0"
    best = sorted((run / "checkpoints").glob("epoch00-miou*.ckpt"))
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    validate = build_cli(["validate", "--config", str(config), "--ckpt_path", str(best[0])])
    assert float(validate.trainer.callback_metrics["val/miou"]) == pytest.approx(float(cli.trainer.callback_metrics["val/miou"]), abs=1e-6)
    build_cli(["predict", "--config", str(config), "--ckpt_path", str(best[0])])
    rows = (run / "predict" / best[0].stem / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,path,classes,pixel_shares" and len(rows) > 1


def test_a_misspelt_option_of_the_segmentation_module_is_a_short_error(tmp_path, seg_root, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(seg_config(tmp_path, seg_root, decoder_chanels=[8])), "--trainer.logger", "false"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "decoder_chanels" in err and "Traceback" not in err

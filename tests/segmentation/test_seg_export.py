"""Export of segmentation checkpoints: the exported weights, TorchScript and ONNX predict what the checkpoint predicts.

Two sources: a plain ``Trainer.fit`` in Python (the module stores its own class in the checkpoint) and the
command line in subclass mode (the hyperparameters hold ``_class_path``, the data module its preprocessing).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from seg_data_helpers import write_split_root
from seg_model_helpers import ShapesDataset, loader, tiny_module

from lit_finetune import keys
from lit_finetune.cli import build_cli, main
from lit_finetune.data.masks import default_palette
from lit_finetune.export import (
    export_checkpoint,
    load_exported,
    model_from_checkpoint,
    module_class_path,
    segmentation_preprocessing_of,
)
from lit_finetune.modules.segmentation import SegmentationModule

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENTATION_CLASS = "lit_finetune.modules.segmentation.SegmentationModule"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """A batch of 3 (the exports are traced with 2) at 48x40 (they are traced at 64x64, the floor for segmentation)."""
    return torch.randn(3, 3, 48, 40, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def python_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("seg_export_python")
    model = tiny_module()
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp),
    )
    trainer.fit(model, loader(ShapesDataset(4, 32), batch_size=2))
    trainer.save_checkpoint(tmp / "model.ckpt")
    return tmp / "model.ckpt"


@pytest.fixture(scope="module")
def exported(python_ckpt) -> dict:
    out = python_ckpt.parent / "exported"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = export_checkpoint(str(python_ckpt), str(out), torchscript=True, onnx=True, example_size=32)
    return {"files": files, "out": out, "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


def checkpoint_logits(ckpt: Path, images: torch.Tensor) -> torch.Tensor:
    """Lightning's own loader as the reference."""
    model = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        return model(images)[keys.LOGITS]


def test_a_python_fit_checkpoint_names_its_module_class(python_ckpt):
    checkpoint = torch.load(python_ckpt, map_location="cpu", weights_only=True)
    assert "_class_path" not in checkpoint["hyper_parameters"]
    assert checkpoint["module_class"] == SEGMENTATION_CLASS
    assert module_class_path(checkpoint) == SEGMENTATION_CLASS
    # The command line's class path wins; a checkpoint with neither (older ones) is a classifier's.
    assert module_class_path({"hyper_parameters": {"_class_path": "my.Model"}, "module_class": SEGMENTATION_CLASS}) == "my.Model"
    assert module_class_path({"hyper_parameters": {}}) == "lit_finetune.modules.classifier.FinetuneClassifier"


def test_model_json_describes_the_segmentation_model(exported):
    config = json.loads((exported["out"] / "model.json").read_text())
    assert config["model_class"] == SEGMENTATION_CLASS
    assert config["task"] == "segmentation" and config["mode"] == "multiclass"
    assert config["ignore_index"] == 255 and config["threshold"] == 0.5
    assert config["palette"] == [list(c) for c in default_palette(3)]  # what the mask writer uses without one
    assert config["init_args"]["num_classes"] == 3 and config["init_args"]["decoder_channels"] == [16, 16, 8, 8]
    assert config["init_args"]["weights"] is None and config["init_args"]["weights_backbone"] is None
    pre = config["preprocessing"]  # no data module: the encoder's default size, the module's statistics
    assert pre["resize_size"] == 224 and pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert set(config["files"]) == {"weights", "torchscript", "onnx"}


def test_preprocessing_without_a_data_module_follows_the_weights():
    # A torchvision segmentation model's weights resize to 520 px; the module's own statistics win when set.
    hparams = {"backbone": "lraspp_mobilenet_v3_large", "weights": "COCO_WITH_VOC_LABELS_V1", "image_mean": [0.5, 0.5, 0.5]}
    pre = segmentation_preprocessing_of({"hyper_parameters": hparams})
    assert pre["resize_size"] == pre["crop_size"] == 520
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_export_is_quiet(exported):
    # No training-mode, TorchScript-deprecation or metric-property warnings: the export silences what is its own.
    assert exported["warnings"] == []


def test_load_exported_predicts_what_the_checkpoint_predicts(python_ckpt, exported, images):
    expected = checkpoint_logits(python_ckpt, images)
    model, config = load_exported(exported["out"])
    assert isinstance(model, SegmentationModule) and not model.training
    with torch.no_grad():
        logits = model(images)[keys.LOGITS]
    assert logits.shape == (3, 3, 48, 40)
    assert torch.equal(logits, expected)


def test_torchscript_returns_the_logits_for_another_batch_and_size(python_ckpt, exported, images):
    expected = checkpoint_logits(python_ckpt, images)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        scripted = torch.jit.load(exported["files"]["torchscript"])
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), expected, rtol=0, atol=1e-5)


def test_onnx_has_dynamic_batch_height_and_width(python_ckpt, exported, images):
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export is optional: pip install onnx onnxscript onnxruntime")
    session = onnxruntime.InferenceSession(exported["files"]["onnx"])
    for batch in (images, images[:1, :, :36, :33]):  # 33: the smallest side it takes
        (logits,) = session.run(None, {"images": batch.numpy()})
        np.testing.assert_allclose(logits, checkpoint_logits(python_ckpt, batch).numpy(), rtol=1e-4, atol=1e-4)


def test_an_unimportable_model_class_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 2}, "module_class": "gone.module.Model"}, ckpt)
    with pytest.raises(ValueError, match=r"Cannot import the model class 'gone\.module\.Model'.*PYTHONPATH"):
        model_from_checkpoint(ckpt)


def test_eval_mode_reaches_the_network():
    # The network is not a registered child; an auxiliary head (fcn) shows which mode it ran in.
    torch.manual_seed(0)
    model = SegmentationModule(2, "fcn_resnet50")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert keys.AUX_LOGITS in model.train()(x)
        assert set(model.eval()(x)) == {keys.LOGITS}


def test_command_line_export_of_a_subclass_mode_checkpoint(tmp_path, images):
    root = write_split_root(tmp_path / "data", num_classes=3)
    palette = [[0, 0, 0], [10, 200, 30], [250, 5, 90]]
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 1,
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
        "model": {"class_path": "lit_finetune.SegmentationModule", "init_args": {"backbone": "resnet18", "decoder_channels": [8, 8, 8, 8]}},
        "data": {
            "class_path": "lit_finetune.SegmentationDataModule",
            "init_args": {
                "root": str(root),
                "batch_size": 2,
                "num_workers": 0,
                "image_size": 32,
                "eval_size": 40,
                "class_names": ["bg", "a", "b"],
                "palette": palette,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
            },
        },
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config))
    build_cli(["fit", "--config", str(path)])
    ckpt = tmp_path / "runs" / "seg" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["_class_path"] == "lit_finetune.SegmentationModule"

    with pytest.raises(SystemExit) as done:
        main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "out"), "--format", "state_dict"])
    assert done.value.code == 0
    exported = json.loads((tmp_path / "out" / "model.json").read_text())
    assert exported["model_class"] == "lit_finetune.SegmentationModule"
    assert exported["class_names"] == ["bg", "a", "b"] and exported["palette"] == palette
    pre = exported["preprocessing"]
    assert pre["resize_size"] == 40 and pre["crop_size"] == 32  # eval_size, image_size of the data module
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.25, 0.25, 0.25]
    model, _ = load_exported(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(model(images)[keys.LOGITS], checkpoint_logits(ckpt, images))

"""Point 3 (export): the exported model predicts exactly what the checkpoint predicts."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from lit_finetune import keys
from lit_finetune.cli import main
from lit_finetune.export import export_checkpoint, load_exported
from lit_finetune.modules.classifier import FinetuneClassifier


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _checkpoint_logits(ckpt, images):
    # Lightning's own loader as the reference (no pretrained weights to fetch: weights=None).
    model = FinetuneClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights=None, weights_only=True).eval()
    with torch.no_grad():
        return model(images)[keys.LOGITS]


def test_export_state_dict_json_and_torchscript(tmp_path, one_epoch_run, images):
    ckpt = one_epoch_run["ckpt"]
    with pytest.raises(SystemExit) as done:
        main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "out"), "--format", "state_dict", "--torchscript", "true"])
    assert done.value.code == 0
    config = json.loads((tmp_path / "out" / "model.json").read_text())
    assert config["class_names"] == ["a", "b", "c"]
    assert config["preprocessing"]["crop_size"] == 32 and config["preprocessing"]["resize_size"] == 32
    assert config["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["init_args"]["backbone"] == "resnet18" and config["init_args"]["num_classes"] == 3

    expected = _checkpoint_logits(ckpt, images)
    model, _ = load_exported(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(model(images)[keys.LOGITS], expected)
        scripted = torch.jit.load(str(tmp_path / "out" / "model.torchscript.pt"))
        assert torch.equal(scripted(images), expected)

    state = torch.load(tmp_path / "out" / "model.pt", weights_only=True)  # a plain state_dict
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_export_onnx_matches_checkpoint(tmp_path, one_epoch_run, images):
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export is optional: pip install onnx onnxscript onnxruntime")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = export_checkpoint(str(one_epoch_run["ckpt"]), str(tmp_path), onnx=True, torchscript=True)  # + model.safetensors
    noise = [str(w.message) for w in caught if "training mode" in str(w.message) or "torch.jit" in str(w.message)]
    assert not noise, noise  # the exported network is in eval mode; TorchScript's deprecation is ours to silence
    model, _ = load_exported(tmp_path)
    expected = _checkpoint_logits(one_epoch_run["ckpt"], images)
    with torch.no_grad():
        assert torch.equal(model(images)[keys.LOGITS], expected)
    session = onnxruntime.InferenceSession(files["onnx"])
    (logits,) = session.run(None, {"images": images.numpy()})  # batch of 5 though exported with 2: dynamic batch
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)

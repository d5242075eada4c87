"""Point 3 (and DataParallel from point 5): foreign weight files load safely, or are refused with a reason."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from lit_finetune.models.backbones import create_backbone
from lit_finetune.models.weights import UnsafeCheckpointError, compare_state_dicts, load_state_dict_file, load_weights
from lit_finetune.modules.classifier import FinetuneClassifier


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _assert_same(state: dict, model: nn.Module) -> None:
    own = model.state_dict()
    assert state.keys() == own.keys()
    for key, value in own.items():
        assert torch.equal(state[key], value), key


def test_whole_pickled_module_is_refused_unless_trusted(tmp_path, resnet):
    path = tmp_path / "whole_model.pth"
    torch.save(resnet, path)  # pickles the class: loading it runs code from the file
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
        load_state_dict_file(path)
    _assert_same(load_state_dict_file(path, trust_pickle=True), resnet)


@pytest.mark.parametrize("wrap", ["dataparallel", "ddp_and_compile", "nested", "safetensors"])
def test_wrapped_and_other_formats_load(tmp_path, resnet, wrap):
    if wrap == "dataparallel":
        path = tmp_path / "dp.pth"
        torch.save(nn.DataParallel(resnet).state_dict(), path)  # keys "module.conv1.weight", ...
        assert next(iter(torch.load(path, weights_only=True))).startswith("module.")
    elif wrap == "ddp_and_compile":
        path = tmp_path / "compiled.pt"
        torch.save({f"module._orig_mod.{k}": v for k, v in resnet.state_dict().items()}, path)
    elif wrap == "nested":
        path = tmp_path / "trainer.pth"
        torch.save({"epoch": 3, "model_state_dict": resnet.state_dict(), "optimizer_state_dict": {}}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path))
    _assert_same(load_state_dict_file(path), resnet)


def test_gpu_saved_tensors_load_on_cpu(tmp_path, resnet, monkeypatch):
    path = tmp_path / "cuda.pth"
    # Record every storage as living on cuda:0, exactly as torch.save does on a GPU machine.
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(resnet.state_dict(), path)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what users hit without map_location
    state = load_state_dict_file(path)
    assert all(v.device.type == "cpu" for v in state.values())
    _assert_same(state, resnet)


def test_lightning_checkpoint_of_our_module_loads_as_backbone(tmp_path):
    torch.manual_seed(0)
    module = FinetuneClassifier(num_classes=3, backbone="resnet18")
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": "2.6"}, path)
    backbone, width = create_backbone("resnet18", str(path), num_classes=5)
    assert width == 512
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, module.backbone.state_dict()[key]), key
    # The whole module, head included, goes back into a module of the same shape.
    other = FinetuneClassifier(num_classes=3, backbone="resnet18")
    report = load_weights(other, path, strict=True)
    assert not report.missing and not report.unexpected and not report.mismatches
    assert torch.equal(
        other.head.state_dict()[next(iter(other.head.state_dict()))], module.head.state_dict()[next(iter(module.head.state_dict()))]
    )


def test_shape_mismatches_are_reported_per_key_with_hints(tmp_path, resnet):
    path = tmp_path / "ten_classes.pth"
    torch.save(resnet.state_dict(), path)
    target = torchvision.models.resnet18(num_classes=4)
    report = load_weights(target, path)
    assert [(m.key, m.file_shape, m.model_shape) for m in report.head_mismatches] == [
        ("fc.weight", (10, 512), (4, 512)),
        ("fc.bias", (10,), (4,)),
    ]
    assert report.head_mismatches[0].hint == "the head has 10 outputs in the file, you asked for 4: the head is replaced, this is fine"
    assert torch.equal(target.conv1.weight, resnet.conv1.weight)  # everything else loaded

    bigger = torchvision.models.resnet50().state_dict()
    with pytest.raises(ValueError) as err:
        load_weights(torchvision.models.resnet18(), bigger)
    message = str(err.value)
    assert "layer1.0.conv1.weight: (64, 64, 1, 1) in the file, (64, 64, 3, 3) in the model" in message
    assert "another architecture or variant" in message
    gray = compare_state_dicts({"conv1.weight": torch.zeros(64, 3, 7, 7)}, {"conv1.weight": torch.zeros(64, 1, 7, 7)})
    assert gray.mismatches[0].hint == "the file's layer takes 1 input channels, the model's 3"


def test_hidden_classifier_layer_of_another_shape_is_an_error_not_a_skipped_head(tmp_path):
    # mobilenet_v3's classifier is [Linear(576, 1024), Hardswish, Dropout, Linear(1024, 1000)]: only
    # classifier.3 is replaced by the head, classifier.0 stays in the backbone and must load.
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v3_small(num_classes=10).state_dict()
    other_head = tmp_path / "ten_classes.pth"
    torch.save(state, other_head)
    backbone, width = create_backbone("mobilenet_v3_small", str(other_head), num_classes=3)
    assert width == 1024
    assert torch.equal(backbone.classifier[0].weight, state["classifier.0.weight"])

    state["classifier.0.weight"] = state["classifier.0.weight"][:512]
    state["classifier.0.bias"] = state["classifier.0.bias"][:512]
    hidden = tmp_path / "hidden_layer_resized.pth"
    torch.save(state, hidden)
    with pytest.raises(ValueError, match=r"classifier\.0\.weight: \(512, 576\) in the file, \(1024, 576\) in the model"):
        create_backbone("mobilenet_v3_small", str(hidden))


def test_head_prefixes_are_the_final_layer_only():
    from lit_finetune.models.weights import head_prefixes_of

    assert head_prefixes_of(torchvision.models.alexnet())[0] == "classifier.6."
    assert head_prefixes_of(torchvision.models.resnet18())[0] == "fc."
    assert head_prefixes_of(FinetuneClassifier(num_classes=2, backbone="resnet18"))[0] == "head."
    report = compare_state_dicts(
        {"classifier.0.weight": torch.zeros(8, 4), "classifier.6.weight": torch.zeros(2, 8)},
        {"classifier.0.weight": torch.zeros(16, 4), "classifier.6.weight": torch.zeros(1000, 8)},
        head_prefixes_of(torchvision.models.alexnet()),
    )
    assert [m.key for m in report.mismatches] == ["classifier.0.weight"]
    assert [m.key for m in report.head_mismatches] == ["classifier.6.weight"]

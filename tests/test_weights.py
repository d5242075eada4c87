"""Local weight files: plain, DataParallel-prefixed, compiled, pickled whole modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from lit_finetune.models.weights import UnsafeCheckpointError
from lit_finetune.modules.classifier import FinetuneClassifier


def reference_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18()


def assert_backbone_equals(model: FinetuneClassifier, reference: nn.Module) -> None:
    ours = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc."):
            assert key not in ours  # replaced by the new head
            continue
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_state_dict_file_loads_bit_for_bit(tmp_path: Path, prefix: str) -> None:
    reference = reference_model()
    path = tmp_path / "resnet18.pth"
    torch.save({prefix + k: v for k, v in reference.state_dict().items()}, path)
    model = FinetuneClassifier(num_classes=4, backbone="resnet18", weights=str(path))
    assert_backbone_equals(model, reference)
    assert model.head.layers.fc.out_features == 4


def test_dataparallel_wrapped_model_state_dict_loads(tmp_path: Path) -> None:
    reference = reference_model()
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(reference).state_dict(), path)  # keys start with "module."
    assert_backbone_equals(FinetuneClassifier(num_classes=2, backbone="resnet18", weights=str(path)), reference)


def test_whole_pickled_module_is_refused_unless_trusted(tmp_path: Path) -> None:
    reference = reference_model()
    path = tmp_path / "whole.pth"
    torch.save(reference, path)
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects.*trust_pickle"):
        FinetuneClassifier(num_classes=2, backbone="resnet18", weights=str(path))
    model = FinetuneClassifier(num_classes=2, backbone="resnet18", weights=str(path), trust_pickle=True)
    assert_backbone_equals(model, reference)


def test_file_fine_tuned_on_other_classes_loads_its_backbone(tmp_path: Path) -> None:
    reference = reference_model()
    reference.fc = nn.Linear(512, 7)
    path = tmp_path / "seven.pth"
    torch.save(reference.state_dict(), path)
    assert_backbone_equals(FinetuneClassifier(num_classes=3, backbone="resnet18", weights=str(path)), reference)


def test_file_of_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    state = reference_model().state_dict()
    state["conv1.weight"] = torch.zeros(64, 4, 7, 7)  # a 4-channel stem
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"conv1.weight: \(64, 4, 7, 7\) in the file, \(64, 3, 7, 7\) in the model \(the file's layer takes 4 input channels",
    ):
        FinetuneClassifier(num_classes=2, backbone="resnet18", weights=str(path))
    torch.save(reference_model().state_dict(), path)
    with pytest.raises(ValueError, match=r"lacks \d+ backbone tensors.*layer1.2"):
        FinetuneClassifier(num_classes=2, backbone="resnet34", weights=str(path))
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(ValueError, match="No key of"):
        FinetuneClassifier(num_classes=2, backbone="resnet18", weights=str(path))


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FinetuneClassifier(num_classes=2, backbone="resnet18", weights=str(tmp_path / "nope.pth"))

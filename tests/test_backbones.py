"""Every torchvision family builds, gets a new head and trains one step at a small input size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_finetune import keys
from lit_finetune.models.backbones import available_backbones, check_backbone_name, create_backbone
from lit_finetune.models.heads import ClassifierHead, find_final_layer
from lit_finetune.modules.classifier import FinetuneClassifier

# One member of each family named in the docs, with the smallest input it accepts here.
FAMILIES = {
    "resnet18": ({}, 32, 512),
    "resnext50_32x4d": ({}, 32, 2048),
    "wide_resnet50_2": ({}, 32, 2048),
    "regnet_x_400mf": ({}, 32, 400),
    "shufflenet_v2_x0_5": ({}, 32, 1024),
    "googlenet": ({}, 32, 1024),
    "alexnet": ({}, 64, 4096),
    "vgg11": ({}, 32, 4096),
    "mobilenet_v2": ({}, 32, 1280),
    "mobilenet_v3_small": ({}, 32, 1024),
    "efficientnet_b0": ({}, 32, 1280),
    "mnasnet0_5": ({}, 32, 1280),
    "convnext_tiny": ({}, 32, 768),
    "densenet121": ({}, 32, 1024),
    "squeezenet1_1": ({}, 32, 512),
    "inception_v3": ({"aux_loss_weight": 0.0}, 75, 2048),
    "vit_b_32": ({"backbone_kwargs": {"image_size": 32}}, 32, 768),
    "swin_t": ({}, 32, 768),
    "maxvit_t": ({}, 224, 512),  # its 7x7 windows need 224 px
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_builds_replaces_head_and_trains(name: str) -> None:
    options, size, width = FAMILIES[name]
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=3, backbone=name, **options)
    assert model.feature_size == width
    assert isinstance(model.head, ClassifierHead) and model.head.layers.fc.out_features == 3
    # The torchvision classifier layer is gone: nothing in the backbone still produces 1000 outputs.
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.backbone.modules())
    model.train()
    images = torch.randn(2, 3, size, size)
    out = model(images, return_features=True)
    assert out[keys.LOGITS].shape == (2, 3)
    assert out[keys.FEATURES].shape == (2, width)
    loss = model.compute_loss(out, torch.tensor([0, 2])).mean()
    loss.backward()
    assert model.head.layers.fc.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_inception_aux_head_is_rebuilt_and_adds_to_the_loss() -> None:
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=4, backbone="inception_v3", aux_loss_weight=0.4).train()
    assert model.backbone.AuxLogits.fc.out_features == 4
    out = model(torch.randn(2, 3, 299, 299))
    assert out[keys.AUX_LOGITS].shape == (2, 4)
    target = torch.tensor([1, 3])
    expected = nn.functional.cross_entropy(out[keys.LOGITS], target) + 0.4 * nn.functional.cross_entropy(out[keys.AUX_LOGITS], target)
    torch.testing.assert_close(model.compute_loss(out, target).mean(), expected)
    model.eval()
    assert keys.AUX_LOGITS not in model(torch.randn(1, 3, 299, 299))


def test_every_torchvision_classifier_has_a_final_layer_of_1000_outputs() -> None:
    # The head finder relies on this rule; check it on every model, built on the meta device (no memory).
    # regnet's builder reads tensor values, which meta tensors lack: those are
    # checked on the CPU for the small members, which share one class and builder with the large ones.
    from torchvision.models import get_model

    def final_width(name: str) -> int:
        kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
        _, layer = find_final_layer(get_model(name, **kwargs))
        return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels

    not_on_meta = []
    for name in available_backbones():
        try:
            with torch.device("meta"):
                assert final_width(name) == 1000, name
        except NotImplementedError:
            not_on_meta.append(name)
    assert all(name.startswith("regnet_") for name in not_on_meta), not_on_meta
    for name in ("regnet_x_400mf", "regnet_y_400mf"):
        assert final_width(name) == 1000, name


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet181'.*resnet18"):
        check_backbone_name("resnet181")
    with pytest.raises(ValueError, match="Did you mean: .*efficientnet_b0"):
        FinetuneClassifier(num_classes=2, backbone="efficentnet_b0")


def test_unknown_weights_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_backbone("resnet18", "IMAGENET21K")


def test_head_options() -> None:
    head = ClassifierHead(16, 3, hidden_dims=[8], dropout=0.5)
    assert [type(m).__name__ for m in head.layers] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert head(torch.randn(4, 16)).shape == (4, 3)
    with pytest.raises(ValueError, match="dropout"):
        ClassifierHead(16, 3, dropout=1.0)

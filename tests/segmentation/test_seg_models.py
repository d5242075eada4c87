"""Every torchvision segmentation model and three encoder families build and run one training step; weight files load."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lit_finetune import keys
from lit_finetune.models.segmenters import EncoderDecoderSegmenter, TorchvisionSegmenter, build_segmenter, segmentation_models
from lit_finetune.models.stages import backbone_stages

pytestmark = pytest.mark.usefixtures("one_thread")

NAMED = [
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]


def one_step(net: torch.nn.Module, num_classes: int) -> dict[str, torch.Tensor]:
    net.train()
    images = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, num_classes, (2, 64, 64))
    out = net(images)
    loss = torch.nn.functional.cross_entropy(out[keys.LOGITS], target)
    if keys.AUX_LOGITS in out:
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(out[keys.AUX_LOGITS], target)
    loss.backward()
    return out


def test_the_named_list_is_torchvisions():
    assert sorted(NAMED) == sorted(segmentation_models())


@pytest.mark.parametrize("name", NAMED)
def test_torchvision_segmenter_builds_and_steps(name):
    net = build_segmenter(name, 3, weights=None, weights_backbone=None)
    assert isinstance(net, TorchvisionSegmenter)
    out = one_step(net, 3)
    assert out[keys.LOGITS].shape == (2, 3, 64, 64)
    assert (keys.AUX_LOGITS in out) == (not name.startswith("lraspp"))
    grads = [p.grad for p in net.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())
    net.eval()
    assert set(net(torch.randn(1, 3, 64, 64))) == {keys.LOGITS}  # no auxiliary output in evaluation
    assert len(backbone_stages(net.backbone)) >= 4


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnext_tiny"])
def test_encoder_families_build_and_step(name):
    net = build_segmenter(name, 4, decoder_channels=[16, 16, 8, 8])
    assert isinstance(net, EncoderDecoderSegmenter)
    assert net.strides[-1] == 32 and net.strides[0] in (2, 4)
    out = one_step(net, 4)
    assert out[keys.LOGITS].shape == (2, 4, 64, 64)
    assert all(p.grad is not None for p in net.parameters())
    # The traced encoder keeps the classifier's parameter names, so its stages are the classifier's.
    reference = torchvision.models.get_model(name)
    encoder_names = {n for n, _ in net.backbone.named_parameters()}
    assert encoder_names <= {n for n, _ in reference.named_parameters()}
    stages = backbone_stages(net.backbone)
    assert sum(len(s) for s in stages) == len(encoder_names) and len(stages) >= 4


def test_encoder_weights_file_loads(tmp_path):
    source = torchvision.models.resnet18(num_classes=7)  # a file fine-tuned on other classes
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    net = EncoderDecoderSegmenter("resnet18", 2, weights=str(tmp_path / "r18.pth"), decoder_channels=[8])
    assert torch.equal(net.backbone.get_submodule("layer3.0.conv1").weight, source.layer3[0].conv1.weight)
    assert torch.equal(net.backbone.bn1.running_var, source.bn1.running_var)


def test_torchvision_segmenter_weights_file_loads_and_heads_are_rebuilt(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.get_model("fcn_resnet50", weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(source.state_dict(), tmp_path / "fcn.pth")
    net = TorchvisionSegmenter("fcn_resnet50", 5, weights=str(tmp_path / "fcn.pth"))
    assert torch.equal(net.backbone.layer4[2].conv3.weight, source.backbone.layer4[2].conv3.weight)
    assert torch.equal(net.head["classifier"][0].weight, source.classifier[0].weight)  # hidden head layers kept
    assert net.head["classifier"][4].out_channels == 5 and net.head["aux_classifier"][4].out_channels == 5
    with pytest.raises(ValueError, match="lacks"):
        torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("backbone.layer4")}, tmp_path / "part.pth")
        TorchvisionSegmenter("fcn_resnet50", 5, weights=str(tmp_path / "part.pth"))


def test_unknown_names_and_misplaced_options_say_what_to_do():
    with pytest.raises(ValueError, match="Did you mean: deeplabv3_resnet50"):
        build_segmenter("deeplabv3_resnet5", 3)
    with pytest.raises(ValueError, match="weights_backbone"):
        build_segmenter("resnet18", 3, weights_backbone="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="tokens"):
        build_segmenter("vit_b_16", 3)
    with pytest.raises(ValueError, match="neither a weights name"):
        build_segmenter("fcn_resnet50", 3, weights="NOT_A_NAME")

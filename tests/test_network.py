"""The frozen-backbone fast path, written once for the classifier and the segmentation networks."""

from __future__ import annotations

import torch
from torch import nn

from lit_finetune.models.classifier import ClassifierNetwork
from lit_finetune.models.network import BackboneHeadNetwork
from lit_finetune.models.segmenters import EncoderDecoderSegmenter, TorchvisionSegmenter


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_a_frozen_backbone_trains_nothing_and_keeps_its_statistics() -> None:
    net = ClassifierNetwork(tiny_backbone(), nn.Linear(4, 2)).train()
    net.backbone.requires_grad_(False)
    stats = net.backbone[1].running_mean.clone()
    out = net(torch.randn(4, 3, 16, 16) + 3, return_features=True)
    torch.testing.assert_close(net.backbone[1].running_mean, stats)  # eval mode inside: statistics untouched
    assert not out["features"].requires_grad and out["logits"].requires_grad  # no graph through the backbone
    assert net.backbone[1].training  # modes restored
    net.backbone.requires_grad_(True)
    net(torch.randn(4, 3, 16, 16) + 3)
    assert not torch.equal(net.backbone[1].running_mean, stats)  # a trainable backbone updates them


def test_every_network_uses_the_one_fast_path() -> None:
    for network in (ClassifierNetwork, TorchvisionSegmenter, EncoderDecoderSegmenter):
        assert issubclass(network, BackboneHeadNetwork) and "features" not in vars(network)

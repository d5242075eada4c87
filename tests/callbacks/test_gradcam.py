"""GradCAM: the map lies on the evidence the model uses, and the module's flags and gradients are exactly as before."""

from __future__ import annotations

import pytest
import torch
from callback_helpers import make_model
from torch import nn

from lit_finetune import FinetuneClassifier
from lit_finetune.callbacks.gradcam import GradCAM, find_target_layer


def test_state_unchanged(full_run):
    (before,) = full_run.callbacks["probe_before"].snapshots
    (after,) = full_run.callbacks["probe_after"].snapshots
    assert after["training"] == before["training"]
    assert not all(before["training"].values()) and any(before["training"].values())  # the flags were uneven
    assert after["requires_grad"] == before["requires_grad"]
    assert any(g is not None for g in before["grads"].values())
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None
        else:
            assert torch.equal(after["grads"][name], grad), name
    for name, param in before["params"].items():
        assert torch.equal(after["params"][name], param), name


def test_heatmaps_logged(full_run):
    cb = full_run.callbacks["gradcam"]
    assert cb.layer_name == "backbone.layer2"  # 32 px input: layer2 is the last map of at least 4x4
    assert cb.last_heatmaps.shape == (4, 1, 32, 32)
    assert 0 <= cb.last_heatmaps.min() and cb.last_heatmaps.max() <= 1
    (event,) = full_run.events.Images("zz-gradcam/val")
    assert event.width == 2 + 4 * 34


def test_layer_choice_follows_input_size():
    model = make_model()
    assert find_target_layer(model, torch.randn(1, 3, 64, 64)) == ("backbone.layer3", "none")
    assert find_target_layer(model, torch.randn(1, 3, 64, 64), min_map_size=2) == ("backbone.layer4", "none")
    assert model.training  # the probe forward restored the mode


def test_validation():
    with pytest.raises(ValueError, match="num_images.*got 100"):
        GradCAM(num_images=100)


def test_heatmaps_of_a_frozen_backbone():
    # A frozen backbone skips autograd in training steps; at validation, Grad-CAM still needs its activations' gradients.
    model = make_model(freeze="backbone").eval()
    cam, pred, _ = GradCAM(num_images=2).heatmaps(model, torch.randn(2, 3, 64, 64))
    assert cam.shape == (2, 1, 64, 64) and pred.shape == (2,)
    assert torch.isfinite(cam).all() and (cam.flatten(1).amax(dim=1) > 0).all()
    assert not model.training and all(not p.requires_grad for p in model.backbone.parameters())


class PatternNet(FinetuneClassifier):
    """One 3x3 convolution whose first channel fires where channel 0 of the image is bright (``relu(x - 1)``), pooled.

    With the head below, the evidence for the explained class is that channel alone, so Grad-CAM's map is the
    channel's activation: high on the bright square, zero elsewhere.
    """

    def build_backbone(self, spec: object) -> tuple[nn.Module, int]:
        conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias[0] = -1.0
        return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4


def planted_images(n: int = 4, size: int = 32) -> tuple[torch.Tensor, list[tuple[slice, slice]]]:
    """Faint noise with one bright 8x8 square in channel 0, in another place in each image."""
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.1
    places = [(slice(2 + 6 * i, 10 + 6 * i), slice(20 - 5 * i, 28 - 5 * i)) for i in range(n)]
    for image, (rows, cols) in zip(images, places, strict=False):
        image[0, rows, cols] = 3.0
    return images, places


@pytest.mark.parametrize("task, outputs", [("multiclass", 2), ("binary", 1), ("multilabel", 2)])
def test_the_map_peaks_on_the_planted_evidence(task: str, outputs: int) -> None:
    model = PatternNet(num_classes=2, task=task).eval()
    fc = model.head.layers.fc
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[outputs - 1, 0] = 20.0  # multiclass: class 1; binary: the logit; multilabel: label 1 (the most probable)
        if task == "multilabel":
            fc.bias[0] = -5.0
    images, places = planted_images()
    cam, pred, _ = GradCAM(num_images=4, target_layer="backbone.1").heatmaps(model, images)
    assert cam.shape == (4, 1, 32, 32)
    assert pred.tolist() == [1] * 4  # the class (multilabel: the label) whose evidence is the square
    for heat, (rows, cols) in zip(cam[:, 0], places, strict=False):
        inside = torch.zeros_like(heat, dtype=torch.bool)
        inside[rows, cols] = True
        peak = divmod(int(heat.argmax()), heat.shape[1])
        assert inside[peak], (peak, rows, cols)  # the hottest pixel is on the square
        assert heat[inside].mean() > 0.9 and heat[~inside].max() < 0.5  # and the square is all that is hot

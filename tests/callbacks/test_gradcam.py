"""GradCAM: heatmaps are logged and the module's flags and gradients are exactly as before."""

from __future__ import annotations

import pytest
import torch

from lit_finetune.callbacks.gradcam import GradCAM, find_target_layer

from callback_helpers import make_model


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

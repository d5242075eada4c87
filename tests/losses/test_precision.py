"""Half-precision inputs and autocast: the losses compute in float32 and agree with float32 inputs."""

from __future__ import annotations

import pytest
import torch

from lit_finetune.losses import (
    BCEDiceLoss,
    CEDiceLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    TverskyLoss,
)


def make_losses(task: str) -> list[torch.nn.Module]:
    if task == "binary":
        return [DiceLoss(task="binary"), FocalLoss(task="binary", gamma=0.5), BCEDiceLoss(task="binary")]
    return [
        CEDiceLoss(label_smoothing=0.1),
        FocalLoss(task="multiclass", gamma=2.0),
        JaccardLoss(task="multiclass", aggregation="per_sample", log_loss=True),
        TverskyLoss(task="multiclass", alpha=0.3, beta=0.7),
    ]


@pytest.fixture(scope="module")
def large_inputs():
    """512x512 logits and masks: a sum over 262144 pixels overflows float16 (max 65504)."""
    g = torch.Generator().manual_seed(0)
    binary = (torch.randn(1, 1, 512, 512, generator=g) * 2, torch.randint(0, 2, (1, 1, 512, 512), generator=g))
    multiclass = (torch.randn(1, 3, 512, 512, generator=g) * 2, torch.randint(0, 3, (1, 512, 512), generator=g))
    return {"binary": binary, "multiclass": multiclass}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_half_inputs_agree_with_float32(large_inputs, task, dtype):
    logits, target = large_inputs[task]
    half = logits.to(dtype)
    for loss in make_losses(task):
        value = loss(half, target)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        # Within 1e-3 of the float32 inputs: the only error left is the rounding of the logits.
        reference = loss(logits, target)
        assert abs(value.item() - reference.item()) < 1e-3, (loss, value.item(), reference.item())
    # Exactly the float32 computation on the rounded logits.
    loss = make_losses(task)[0]
    torch.testing.assert_close(loss(half, target), loss(half.float(), target))


def test_autocast_region_gives_float32_loss_and_gradients():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    image = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 4, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        assert logits.dtype == torch.bfloat16
        losses = [
            CEDiceLoss(num_classes=4)(logits, target),
            FocalLoss(task="multiclass")(logits, target),
            JaccardLoss(task="multiclass", reduction="none")(logits, target),
        ]
    for value in losses:
        assert value.dtype == torch.float32
    sum(v.sum() for v in losses).backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    expected = CEDiceLoss(num_classes=4)(logits.detach().float(), target)
    torch.testing.assert_close(losses[0].detach(), expected)


def test_double_inputs_stay_double():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4))
    assert DiceLoss(task="multiclass")(logits, target).dtype == torch.float64
    assert FocalLoss(task="multiclass")(logits, target).dtype == torch.float64

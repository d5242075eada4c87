"""BCE-Dice and CE-Dice equal the weighted sum of their terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_finetune.losses import (
    BCEDiceLoss,
    CEDiceLoss,
    bce_dice_loss,
    ce_dice_loss,
    dice_loss,
    soft_cross_entropy_loss,
)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("aggregation", ["global", "per_sample"])
def test_bce_dice_is_weighted_sum(aggregation, reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 6, 6, generator=g)
    target = torch.randint(0, 2, (3, 1, 6, 6), generator=g).to(torch.uint8)
    target[0] = 0  # an empty mask: Dice leaves it out, BCE does not
    target[1, 0, 0] = 255
    kw = dict(ignore_index=255, aggregation=aggregation, reduction=reduction)
    loss = BCEDiceLoss(task="binary", bce_weight=0.3, dice_weight=0.7, **kw)(logits, target)
    expected = 0.3 * soft_cross_entropy_loss(logits, target, task="binary", **kw) + 0.7 * dice_loss(logits, target, task="binary", **kw)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(bce_dice_loss(logits, target, bce_weight=0.3, dice_weight=0.7, **kw), expected)
    if aggregation == "global" and reduction == "mean":
        valid = target != 255
        bce = F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())
        torch.testing.assert_close(BCEDiceLoss(dice_weight=0.0, ignore_index=255)(logits, target), bce)


@pytest.mark.parametrize("aggregation", ["global", "per_sample"])
def test_ce_dice_is_weighted_sum(aggregation):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    kw = dict(ignore_index=255, class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1, aggregation=aggregation)
    loss = CEDiceLoss(ce_weight=2.0, include_background=False, **kw)(logits, target)
    expected = 2 * soft_cross_entropy_loss(logits, target, task="multiclass", **kw) + dice_loss(
        logits, target, task="multiclass", include_background=False, ignore_index=255,
        class_weights=[1.0, 2.0, 3.0], aggregation=aggregation,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ce_dice_loss(logits, target, ce_weight=2.0, include_background=False, **kw), expected)
    # Plain CE term against torch.
    ce_only = CEDiceLoss(dice_weight=0.0)(logits, target)
    torch.testing.assert_close(ce_only, F.cross_entropy(logits, target))


def test_per_sample_sum_and_none():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 2, 3, 3, generator=g)
    target = torch.randint(0, 2, (4, 2, 3, 3), generator=g)
    loss = BCEDiceLoss(task="multilabel", aggregation="per_sample", reduction="none")
    none = loss(logits, target)
    assert none.shape == (4,)
    summed = BCEDiceLoss(task="multilabel", aggregation="per_sample", reduction="sum")(logits, target)
    torch.testing.assert_close(summed, none.sum())
    mean = BCEDiceLoss(task="multilabel", aggregation="per_sample")(logits, target)
    torch.testing.assert_close(mean, none.mean())

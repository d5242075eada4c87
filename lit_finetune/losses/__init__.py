"""Losses for classification and segmentation: Dice, Jaccard, Tversky, focal, cross-entropy, combinations.

Every loss has a functional form (``dice_loss``) and an ``nn.Module`` form (``DiceLoss``) built on
the same statistics, takes ``(preds, target)`` with logits by default, follows torchmetrics'
argument names (``task``, ``num_classes``, ``ignore_index``, ...), computes in float32 inside
autocast and stays finite at saturated logits. :class:`LossMetric` turns any of them into a
``torchmetrics.Metric`` whose ``compute()`` is the exact epoch loss, also under DDP.
"""

from lit_finetune.losses._common import StatisticsLoss
from lit_finetune.losses.combined import BCEDiceLoss, CEDiceLoss, bce_dice_loss, ce_dice_loss
from lit_finetune.losses.cross_entropy import SmoothedBCEWithLogitsLoss, SoftCrossEntropyLoss, soft_cross_entropy_loss
from lit_finetune.losses.dice import DiceLoss, dice_loss
from lit_finetune.losses.focal import FocalLoss, focal_loss
from lit_finetune.losses.jaccard import JaccardLoss, jaccard_loss
from lit_finetune.losses.metric import LossMetric
from lit_finetune.losses.tversky import TverskyLoss, tversky_loss

__all__ = [
    "BCEDiceLoss",
    "CEDiceLoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "LossMetric",
    "SmoothedBCEWithLogitsLoss",
    "SoftCrossEntropyLoss",
    "StatisticsLoss",
    "TverskyLoss",
    "bce_dice_loss",
    "ce_dice_loss",
    "dice_loss",
    "focal_loss",
    "jaccard_loss",
    "soft_cross_entropy_loss",
    "tversky_loss",
]

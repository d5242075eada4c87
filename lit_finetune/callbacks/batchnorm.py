"""BatchNorm on small data: a warning when the running statistics would barely move, and the momentum that fixes it.

A BatchNorm layer updates its running mean and variance once per training forward pass:
``running = (1 - momentum) * running + momentum * batch``. After ``n`` passes the initial values still weigh
``(1 - momentum) ** n``. torchvision's MobileNetV3 and EfficientNet use ``momentum=0.01``: 36 passes (24 images,
a dozen short epochs) leave 70 % of the initial values (0 and 1 from scratch, ImageNet's with pretrained weights)
in the statistics that evaluation uses, and eval-mode predictions collapse while training metrics rise.
"""

from __future__ import annotations

import math

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

TARGET_SHARE = 0.95
"""The share of the running statistics that the suggested momentum makes the run's batches replace."""


def trained_batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that keep running statistics and train (a frozen layer held in eval mode never updates them)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    return [m for m in layers if not m.affine or any(p.requires_grad for p in m.parameters(recurse=False))]


def updated_share(momentum: float | None, passes: float) -> float:
    """Share of the running statistics that ``passes`` training forwards replace (1 for a cumulative average: ``momentum=None``)."""
    if momentum is None or passes <= 0:
        return 1.0 if momentum is None else 0.0
    return 1.0 - (1.0 - momentum) ** passes


def suggested_momentum(passes: float, share: float = TARGET_SHARE) -> float:
    """The smallest momentum (at least 0.1, PyTorch's default; two decimals, rounded up) whose ``passes`` replace ``share``."""
    if passes <= 0 or math.isinf(passes):
        return 0.1
    return max(0.1, math.ceil(100 * (1.0 - (1.0 - share) ** (1.0 / passes))) / 100)


class BatchNormMomentum(Callback):
    """Check at fit start that the run moves the BatchNorm running statistics; optionally set the momentum.

    The training forward passes of the whole run (``trainer.estimated_stepping_batches`` times
    ``accumulate_grad_batches``) and each trained BatchNorm layer's momentum give the share of its running
    statistics that training replaces. Below ``min_share`` a warning names the layers' momentum and the
    ``momentum`` that would do (``--batchnorm.momentum`` on the command line, where this callback is on by default).

    Args:
        momentum: set every trained BatchNorm layer's momentum to this at fit start (0.1 is PyTorch's default;
            small data sets need more); None: keep the model's and only check.
        min_share: warn when the run replaces less than this share of the running statistics.

    Raises:
        ValueError: ``momentum`` outside (0, 1] or ``min_share`` outside [0, 1].

    Example::

        trainer = Trainer(callbacks=[BatchNormMomentum(momentum=0.1)])  # mobilenet_v3 on 24 images
    """

    def __init__(self, momentum: float | None = None, min_share: float = 0.5) -> None:
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"`momentum` must be in (0, 1] (or None to keep the model's), got {momentum}.")
        if not 0.0 <= min_share <= 1.0:
            raise ValueError(f"`min_share` must be in [0, 1], got {min_share}.")
        self.momentum = momentum
        self.min_share = min_share

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layers = trained_batchnorms(pl_module)
        if not layers:
            return
        if self.momentum is not None:
            for layer in layers:
                layer.momentum = self.momentum
            rank_zero_info(f"BatchNorm momentum {self.momentum} on {len(layers)} layers.")
        passes = float(trainer.estimated_stepping_batches) * trainer.accumulate_grad_batches
        momenta = sorted({layer.momentum for layer in layers}, key=lambda m: -1.0 if m is None else m)
        share = min(updated_share(m, passes) for m in momenta)
        if share < self.min_share:
            rank_zero_warn(
                f"BatchNorm running statistics will barely move: momentum {momenta[0]} over the run's {passes:.0f} training "
                f"batches replaces {share:.0%} of their initial values, so evaluation (eval mode) normalizes with statistics "
                f"that do not describe this data. Set `--batchnorm.momentum {suggested_momentum(passes)}` "
                "(BatchNormMomentum(momentum=...)) or train for more batches."
            )

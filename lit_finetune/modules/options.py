"""What a concrete task module builds before it calls ``TaskLightningModule.__init__``: its training options and its loss.

:class:`TrainingOptions` (freezing, learning rates per part, the scheduler, the auxiliary loss weight) is checked
when it is made; :func:`resolve_loss` returns the configured loss or the task's default, weighted by
``lit_finetune.tasks.loss_weight`` (the one path of ``class_weights``/``pos_weight``, ``"auto"`` included);
:func:`per_sample_copy` is the copy of the loss that gives callbacks one value per sample.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from lit_finetune.optim.freezing import FreezeSpec
from lit_finetune.tasks import Task


@dataclass(frozen=True)
class TrainingOptions:
    """How a task module trains its network: freezing, learning rates per part, the scheduler, the auxiliary loss.

    Args:
        freeze: ``"none"``, ``"backbone"``, the number of leading backbone stages, or module/parameter-name globs.
        train_bn: keep BatchNorm layers inside frozen parts training.
        head_lr: LR of the head groups; None takes the optimizer's ``lr``.
        backbone_lr_mult: backbone LR relative to the head LR.
        layer_decay: layer-wise LR decay over the backbone stages; 1 disables it.
        no_weight_decay_norm_bias: no weight decay on norm layers, biases and position embeddings/tokens.
        scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        scheduler_monitor: metric that ``ReduceLROnPlateau`` watches.
        aux_loss_weight: weight of an auxiliary head's loss (``aux_logits`` of the forward) in training.
        channels_last: convert the network to the channels-last memory format.

    Raises:
        ValueError: ``head_lr``, ``backbone_lr_mult``, ``layer_decay`` or ``aux_loss_weight`` out of range.
    """

    freeze: FreezeSpec = "none"
    train_bn: bool = False
    head_lr: float | None = None
    backbone_lr_mult: float = 1.0
    layer_decay: float = 1.0
    no_weight_decay_norm_bias: bool = True
    scheduler_interval: Literal["epoch", "step"] = "epoch"
    scheduler_monitor: str = "val/loss"
    aux_loss_weight: float = 0.0
    channels_last: bool = False

    def __post_init__(self) -> None:
        head_lr, mult, decay = self.head_lr, self.backbone_lr_mult, self.layer_decay
        if mult < 0 or not 0 < decay <= 1 or (head_lr is not None and head_lr <= 0):
            raise ValueError(
                f"Need head_lr > 0 (or None), backbone_lr_mult >= 0 and 0 < layer_decay <= 1; got head_lr={head_lr}, "
                f"backbone_lr_mult={mult}, layer_decay={decay}."
            )
        if self.aux_loss_weight < 0:
            raise ValueError(f"`aux_loss_weight` must be >= 0 (0 removes the auxiliary head), got {self.aux_loss_weight}.")


def resolve_loss(
    task: Task, loss: nn.Module | None, label_smoothing: float = 0.0, weight: Tensor | None = None, weight_options: str = "`class_weights`"
) -> nn.Module:
    """The loss a module optimizes: ``loss`` exactly as configured, or the task's default with ``label_smoothing`` and ``weight``.

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1), or loss weights (named by ``weight_options``) or ``label_smoothing`` given with a
            loss of one's own.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
    if loss is None:
        return task.default_loss(label_smoothing, weight)
    if weight is not None:
        raise ValueError(f"{weight_options} configure the default loss; give them to your own `loss` instead.")
    if label_smoothing > 0:
        raise ValueError("`label_smoothing` configures the default loss; give it to your own `loss` instead (or leave it at 0).")
    return loss


def per_sample_copy(loss: nn.Module) -> nn.Module:
    """A copy of ``loss`` that returns one value per sample, for callbacks (the configured loss is left as it is).

    ``reduction="none"``; losses of ``lit_finetune.losses`` that aggregate over the batch score each sample
    on its own (``aggregation="per_sample"``).
    """
    if not hasattr(loss, "reduction"):
        raise ValueError(
            f"The loss {type(loss).__name__} has no `reduction` attribute: the module needs a per-sample value of it "
            "for the callbacks (reduction='none'). Give it a `reduction` argument or override `sample_losses`."
        )
    copy = deepcopy(loss)
    copy.reduction = "none"  # type: ignore[assignment]
    if getattr(copy, "aggregation", None) == "global":
        copy.aggregation = "per_sample"  # type: ignore[assignment]
    for param in copy.parameters():
        param.requires_grad_(False)
    return copy

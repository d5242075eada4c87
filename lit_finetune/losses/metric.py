"""A loss as a ``torchmetrics.Metric``: differentiable batch value, exact epoch value under DDP."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_finetune.losses._common import Statistics, StatisticsLoss

_STATE_PREFIX = "stat_"


class LossMetric(Metric):
    """Wrap a loss module so that it is both the training loss and its epoch-level metric.

    ``forward(preds, target)`` returns the differentiable batch loss (the value to back-propagate)
    and accumulates detached statistics; ``compute()`` returns the loss of everything seen since the
    last ``reset()``, summed across processes under DDP. The value is exact, not a mean of batch
    means: with a loss of this library the states are the loss's additive statistics (the sum of
    per-sample losses and their count for ``aggregation="per_sample"``; the per-class intersection
    and cardinality sums for a global Dice/Jaccard/Tversky; the sum of element losses and their
    count for a global focal or cross-entropy loss), so ``compute()`` equals the loss of the
    concatenated data whatever the batch sizes.

    Any other ``nn.Module`` loss (for example ``torch.nn.CrossEntropyLoss``) also works: a scalar
    output is taken as the mean over the batch and weighted by the batch size; an output with
    ``reduction="none"`` is averaged over its non-batch dimensions and counted per sample.

    After each ``forward`` the detached per-sample losses ``(N,)`` of the batch are available as
    :attr:`sample_loss` (``None`` for a foreign loss with a scalar output), ready for best/worst
    selection without a second pass.

    The wrapped loss's ``reduction`` does not matter here: the batch value is always the mean.

    Args:
        loss: The loss module, for example ``DiceLoss(task="multiclass", num_classes=3)``. For a
            global overlap loss under DDP, give it ``num_classes`` so every process starts with
            states of the same shape.
        sync_on_compute: Sum the states across processes in ``compute()``.

    Raises:
        TypeError: If ``loss`` is not an ``nn.Module``.

    Example::

        >>> import torch
        >>> from lit_finetune.losses import DiceLoss, LossMetric
        >>> metric = LossMetric(DiceLoss(task="binary"))
        >>> logits = torch.randn(4, 1, 8, 8, requires_grad=True)
        >>> batch_loss = metric(logits, torch.randint(0, 2, (4, 1, 8, 8)))
        >>> batch_loss.backward()
        >>> epoch_loss = metric.compute()  # exact over all batches seen
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, loss: nn.Module, sync_on_compute: bool = True) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        if not isinstance(loss, nn.Module):
            raise TypeError(f"`loss` must be an nn.Module (for example DiceLoss(...)), got {type(loss).__name__}.")
        self.loss = loss
        defaults = loss.epoch_statistics_defaults() if isinstance(loss, StatisticsLoss) else _mean_defaults()
        self._state_names = tuple(defaults)
        for name, default in defaults.items():
            self.add_state(_STATE_PREFIX + name, default=default, dist_reduce_fx="sum")
        self.sample_loss: Tensor | None = None
        self._batch: Statistics | None = None

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        """Return the differentiable mean loss of the batch and add the batch to the states."""
        if isinstance(self.loss, StatisticsLoss):
            stats = self.loss.sample_statistics(preds, target)
            epoch = self.loss.epoch_statistics(stats)
            batch_loss = self.loss.loss_from_epoch_statistics(epoch)
            losses, weights = self.loss.sample_loss(stats)
            self.sample_loss = (losses * weights).detach()
        else:
            batch_loss, self.sample_loss, epoch = _foreign_loss(self.loss, preds, target)
        self._batch = epoch
        try:
            self.update(preds, target)
        finally:
            self._batch = None
        self._forward_cache = batch_loss.detach()  # type: ignore[assignment]  # torchmetrics starts it as an unannotated None
        return batch_loss

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the statistics of a batch to the states (no gradient)."""
        epoch = self._batch
        if epoch is None:
            with torch.no_grad():
                if isinstance(self.loss, StatisticsLoss):
                    epoch = self.loss.epoch_statistics(self.loss.sample_statistics(preds, target))
                else:
                    epoch = _foreign_loss(self.loss, preds, target)[2]
        for name in self._state_names:
            state = _STATE_PREFIX + name
            setattr(self, state, getattr(self, state) + epoch[name].detach().to(getattr(self, state).dtype))

    def compute(self) -> Tensor:
        """The loss over every sample seen since the last ``reset()`` (0 before any valid sample)."""
        epoch = {name: getattr(self, _STATE_PREFIX + name) for name in self._state_names}
        if isinstance(self.loss, StatisticsLoss):
            return self.loss.loss_from_epoch_statistics(epoch)
        count = epoch["count"]
        return torch.where(count > 0, epoch["loss_sum"], 0.0) / count.clamp_min(1)


def _mean_defaults() -> Statistics:
    return {"loss_sum": torch.zeros(()), "count": torch.zeros(())}


def _foreign_loss(loss: nn.Module, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None, Statistics]:
    """Batch mean, per-sample losses (or None) and (sum, count) of a loss outside this library."""
    output = loss(preds, target)
    if output.ndim == 0:
        count = torch.tensor(float(preds.shape[0]), device=output.device)
        return output, None, {"loss_sum": output * count, "count": count}
    per_sample = output.reshape(output.shape[0], -1).mean(dim=1)
    count = torch.tensor(float(per_sample.numel()), device=output.device)
    return per_sample.mean(), per_sample.detach(), {"loss_sum": per_sample.sum(), "count": count}

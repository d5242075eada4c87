"""Learning-rate schedulers that torch lacks, written for fine-tuning.

Both schedulers are closed-form :class:`torch.optim.lr_scheduler.LRScheduler` subclasses: the LR of a
parameter group is ``initial_lr * factor(last_epoch)``, computed from the group's own ``initial_lr``.
Per-group scales (a smaller LR for the backbone, layer-wise LR decay) therefore survive scheduling,
and a group added to the optimizer after the scheduler was built (an unfreeze milestone) is scheduled
from its own ``initial_lr`` (its ``lr`` when it was added) at the current point of the schedule.

The state (``last_epoch``, ``base_lrs``) is saved by ``state_dict`` and restored by
``load_state_dict``, so resuming from a Lightning checkpoint needs no hand-set ``last_epoch``.

Example::

    >>> import torch
    >>> from lit_finetune.optim.schedulers import StepDecayLR
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> scheduler = StepDecayLR(optimizer, step_epochs=30)
    >>> for _ in range(30):
    ...     optimizer.step()
    ...     scheduler.step()
    >>> round(optimizer.param_groups[0]["lr"], 6)
    0.01
"""

import math
from abc import ABC, abstractmethod

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["StepDecayLR", "WarmupCosineLR"]


class _GroupScaledLR(LRScheduler, ABC):
    """Closed-form scheduler: ``lr = initial_lr * lr_factor(last_epoch)`` for every group.

    Subclasses implement :meth:`lr_factor`. Groups added after construction get their
    ``initial_lr`` from their ``lr`` and join ``base_lrs``.
    """

    @abstractmethod
    def lr_factor(self, step: int) -> float:
        """Multiplier of every group's ``initial_lr`` after ``step`` calls of :meth:`step`."""

    def get_lr(self) -> list[float | Tensor]:
        self._add_new_groups()
        factor = self.lr_factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self.get_lr()

    def _add_new_groups(self) -> None:
        for group in self.optimizer.param_groups[len(self.base_lrs) :]:
            self.base_lrs.append(group.setdefault("initial_lr", group["lr"]))


class StepDecayLR(_GroupScaledLR):
    """Multiply every group's LR by ``gamma`` every ``step_epochs`` scheduler steps.

    ``lr = initial_lr * gamma ** (last_epoch // step_epochs)``: the classic ImageNet rule
    (``lr = base_lr * 0.1 ** (epoch // 30)``) as a scheduler, with state saved in checkpoints.
    Use it with ``interval: epoch`` (the default of the module).

    Args:
        optimizer: Wrapped optimizer.
        step_epochs: Number of scheduler steps (epochs with ``interval: epoch``) between decays.
        gamma: Multiplicative factor applied at each decay.
        last_epoch: Index of the last step, ``-1`` to start fresh.

    Raises:
        ValueError: If ``step_epochs`` is not positive or ``gamma`` is not in ``(0, 1]``.

    Example::

        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> scheduler = StepDecayLR(optimizer, step_epochs=2, gamma=0.5)
        >>> [scheduler.lr_factor(epoch) for epoch in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_epochs: int = 30, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if step_epochs < 1:
            raise ValueError(f"step_epochs must be a positive number of epochs, got {step_epochs}.")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] (0.1 divides the LR by 10), got {gamma}.")
        self.step_epochs = step_epochs
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_factor(self, step: int) -> float:
        return self.gamma ** (max(step, 0) // self.step_epochs)


class WarmupCosineLR(_GroupScaledLR):
    """Linear warm-up followed by cosine decay, stepped once per optimizer step.

    For step ``t`` (the number of :meth:`step` calls so far) and every group:

    - ``t < warmup_steps``: ``factor = warmup_start_factor + (1 - warmup_start_factor) * t / warmup_steps``;
    - afterwards: ``factor = min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2`` with
      ``p = (t - warmup_steps) / (total_steps - warmup_steps)`` clamped to ``[0, 1]``;

    and ``lr = initial_lr * factor``. The floor is a ratio of each group's LR (not an absolute
    ``eta_min``) so that per-group scales hold to the end.

    ``total_steps=None`` leaves the length to the module: ``FinetuneClassifier.configure_optimizers``
    sets ``total_steps`` to ``trainer.estimated_stepping_batches`` (``interval: step``) or
    ``trainer.max_epochs`` (``interval: epoch``) right after building the scheduler. Built by hand,
    set ``scheduler.total_steps`` before the first :meth:`step`.

    Args:
        optimizer: Wrapped optimizer.
        total_steps: Length of the whole schedule (warm-up included) in scheduler steps.
        warmup_steps: Number of steps of linear warm-up.
        warmup_start_factor: LR factor at step 0 of the warm-up.
        min_lr_ratio: LR factor at the end of the cosine (each group's ``eta_min / initial_lr``).
        last_epoch: Index of the last step, ``-1`` to start fresh.

    Raises:
        ValueError: If a length is negative, ``warmup_steps >= total_steps``, or a factor is outside ``[0, 1]``.

    Example::

        >>> import torch
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> scheduler = WarmupCosineLR(optimizer, total_steps=10, warmup_steps=2)
        >>> [round(scheduler.lr_factor(t), 3) for t in (0, 1, 2, 6, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        if total_steps is not None and total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must be larger than warmup_steps ({warmup_steps}); "
                "leave total_steps unset to let the module take it from the trainer."
            )
        for name, value in (("warmup_start_factor", warmup_start_factor), ("min_lr_ratio", min_lr_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (a fraction of each group's LR), got {value}.")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def lr_factor(self, step: int) -> float:
        step = max(step, 0)
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        if step == self.warmup_steps:
            return 1.0
        if self.total_steps is None:
            raise RuntimeError(
                "WarmupCosineLR.total_steps is not set: give `total_steps` in the config, or build the "
                "scheduler through FinetuneClassifier, which sets it from the trainer."
            )
        cosine_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / cosine_steps, 1.0)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

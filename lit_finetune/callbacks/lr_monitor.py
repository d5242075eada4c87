"""Lightning's ``LearningRateMonitor`` with its charts in one TensorBoard section after the metrics."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from typing_extensions import override


class GroupedLearningRateMonitor(LearningRateMonitor):
    """``LearningRateMonitor`` whose tags all start with ``prefix``: one TensorBoard section for the optimizer.

    TensorBoard sorts sections by the part of a tag before the first ``/``; Lightning's tags
    (``lr-AdamW/head``, ``lr-AdamW/head-momentum``, one section per optimizer) would come before
    ``train/`` and ``val/``. With the default prefix they become ``zz-optim/lr-AdamW/head``, ...: the
    learning rates, momenta and weight decays share the last section, and ``train/loss``,
    ``val/acc`` and ``val/loss`` are on the first screen.

    Args:
        logging_interval: ``"step"``, ``"epoch"`` or None (the scheduler's interval).
        log_momentum: also log the momentum (``betas[0]`` for Adam-like optimizers).
        log_weight_decay: also log the weight decay.
        prefix: put before every tag; ``""`` gives Lightning's names.

    Example::

        trainer = Trainer(callbacks=[GroupedLearningRateMonitor(log_momentum=True)])
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        prefix: str = "zz-optim/",
    ) -> None:
        super().__init__(logging_interval=logging_interval, log_momentum=log_momentum, log_weight_decay=log_weight_decay)
        self.prefix = prefix

    @override
    def _extract_stats(self, trainer: Trainer, interval: str) -> dict[str, float]:
        return {f"{self.prefix}{name}": value for name, value in super()._extract_stats(trainer, interval).items()}

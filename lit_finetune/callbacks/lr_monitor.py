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

    Charts are drawn only for groups whose values differ: a ``<name>.no_decay`` group (see
    :func:`lit_finetune.optim.param_groups.parameter_groups`) has the LR and momentum of its twin ``<name>``
    and a weight decay of 0, so when the twin is present its charts are left out. A plain recipe shows
    one LR, one momentum and one weight decay.

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
        stats = super()._extract_stats(trainer, interval)
        return {f"{self.prefix}{name}": value for name, value in stats.items() if not _twin_present(name, stats)}


def _twin_present(tag: str, stats: dict[str, float]) -> bool:
    """Whether ``tag`` (``lr-AdamW/all.no_decay``, ``...-momentum``) belongs to a ``.no_decay`` group whose twin is logged."""
    for suffix in ("", "-momentum", "-weight_decay"):
        if suffix and not tag.endswith(suffix):
            continue
        group = tag[: len(tag) - len(suffix)] if suffix else tag
        if group.endswith(".no_decay") and group.removesuffix(".no_decay") in stats:
            return True
    return False

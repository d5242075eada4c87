"""Lightning's ``TensorBoardLogger`` with the ``epoch`` chart moved behind the metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from typing_extensions import override

EPOCH_TAG = "zz-progress/epoch"


class TensorBoardLogger(LightningTensorBoardLogger):
    """``TensorBoardLogger`` that writes Lightning's automatic ``epoch`` scalar under ``epoch_tag``.

    Lightning adds ``epoch`` to every batch of metrics it logs. TensorBoard's Time Series view sorts its
    sections by the part of a tag before the first ``/`` (a tag without one is a section of its own), so
    ``epoch`` would come before ``train/`` and ``val/``. Under ``zz-progress/epoch`` it joins the sections that
    come after the metrics (the diagnostics callbacks' tags all start with ``zz-``). All other arguments are
    those of Lightning's ``TensorBoardLogger``.

    Args:
        save_dir: the root folder of the runs.
        name: the experiment folder under ``save_dir``.
        version: the run folder (``version_N`` when an int; None: the next free one).
        log_graph: add the model graph.
        default_hp_metric: write the placeholder ``hp_metric``.
        prefix: put before every metric name.
        sub_dir: a sub-folder of the run for the event files.
        epoch_tag: the tag of the epoch scalar; None leaves it out.

    Example::

        trainer = Trainer(logger=TensorBoardLogger("runs", name="quickstart", default_hp_metric=False))
    """

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | None = None,
        epoch_tag: str | None = EPOCH_TAG,
    ) -> None:
        super().__init__(
            save_dir, name=name, version=version, log_graph=log_graph, default_hp_metric=default_hp_metric, prefix=prefix, sub_dir=sub_dir
        )
        self.epoch_tag = epoch_tag

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        renamed = {name: value for name, value in metrics.items() if name != "epoch"}
        if "epoch" in metrics and self.epoch_tag:
            renamed[self.epoch_tag] = metrics["epoch"]
        super().log_metrics(renamed, step)

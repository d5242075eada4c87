"""Per-class precision, recall, F1 and support, and the confusion matrix, of a ``test`` run, written to files and TensorBoard.

The numbers are torchmetrics' (``Precision``, ``Recall``, ``F1Score`` and ``StatScores`` with
``average=None``, ``ConfusionMatrix``), so they reduce across DDP ranks; rank zero writes
``test_report.csv`` and ``test_report.md`` in the run folder and the Markdown table to TensorBoard.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import ConfusionMatrix, F1Score, MetricCollection, Precision, Recall, StatScores
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.callbacks._tensorboard import tensorboard_writer
from lit_finetune.tasks import Task, has_soft_targets, task_of

METRIC_COLUMNS = ["precision", "recall", "f1", "support"]


class TestReport(Callback):
    """After ``test``, write a classification report: per class precision, recall, F1 and support, with the confusion matrix.

    One class per image (multiclass, binary): a row per class (binary: the negative and the positive
    class), then ``accuracy``, ``macro avg`` and ``weighted avg`` (support-weighted) rows, as in
    scikit-learn's ``classification_report``; each class row also holds its confusion-matrix row
    (``pred:<class>`` columns: how many images of that true class were predicted as each class).
    Multilabel: a row per label (its decision at the label's threshold) with its ``tn``/``fp``/``fn``/``tp``.
    Batches with soft targets (mixup) are skipped; per-pixel (segmentation) tasks are left out. Written, on
    rank zero, to ``<dirpath>/test_report.csv`` and ``test_report.md`` and to TensorBoard as text ``test_report``.

    Args:
        dirpath: folder of the files; None: the trainer's log folder (the run folder), or its root folder
            without a logger.
        digits: decimals of the Markdown table (the CSV keeps full precision).

    Raises:
        ValueError: ``digits`` below 0.

    Example::

        trainer = Trainer(callbacks=[TestReport()])
        trainer.test(model, datamodule=data)  # writes <log_dir>/test_report.csv and .md
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, dirpath: str | None = None, digits: int = 4) -> None:
        if digits < 0:
            raise ValueError(f"`digits` must be 0 or more, got {digits}.")
        self.dirpath = dirpath
        self.digits = digits
        self.metrics: MetricCollection | None = None
        self.names: list[str] = []
        self.single_label = True
        self.rows: list[dict[str, Any]] = []
        self.report_dir: Path | None = None

    def _build(self, task: Task) -> MetricCollection:
        names = task.confusion_names()
        self.single_label = names is not None
        if names is not None:  # one class per image: the predicted class against the true class
            args: dict[str, Any] = {"task": "multiclass", "num_classes": len(names)}
        else:
            args = task.torchmetrics_args()
            names = task.report_names()
        self.names = names
        return MetricCollection(
            {
                "precision": Precision(**args, average=None),
                "recall": Recall(**args, average=None),
                "f1": F1Score(**args, average=None),
                "stats": StatScores(**args, average=None),
                "confusion": ConfusionMatrix(**args),
            },
            compute_groups=False,
        )

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.task = task_of(pl_module, "TestReport")
        if self.task.dense:  # per-pixel tasks (segmentation) report their own per-class scores
            self.metrics = None
            return
        self.metrics = self._build(self.task).to(pl_module.device)

    @override
    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.metrics is None or not isinstance(outputs, dict) or keys.LOGITS not in outputs:
            return
        logits, target = outputs[keys.LOGITS], outputs[keys.TARGET]
        if has_soft_targets(self.task, batch if isinstance(batch, dict) else {keys.TARGET: target}):
            return
        if self.single_label:
            pred = self.task.predict(logits).pred
            target = self.task.report_inputs(logits, target)[1]
            self.metrics.update(pred, target)
        else:
            self.metrics.update(*self.task.metric_inputs(logits, target))

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.metrics is None or not any(m.update_called for m in self.metrics.values()):
            return
        results = self.metrics.compute()  # every rank: the states are reduced across ranks
        self.metrics.reset()
        self.rows = self._rows(results)
        if trainer.global_rank != 0:
            return
        folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.report_dir = folder
        header = self._header()
        with open(folder / "test_report.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(self.rows)
        markdown = self.markdown()
        (folder / "test_report.md").write_text(markdown)
        tensorboard = tensorboard_writer(trainer)
        if tensorboard is not None:
            tensorboard.add_text("test_report", markdown, trainer.global_step)
        rank_zero_info(f"Test report written to {folder / 'test_report.csv'} and test_report.md")

    # ------------------------------------------------------------------ tables
    def _confusion_columns(self) -> list[str]:
        if self.single_label:
            return [f"pred:{name}" for name in self.names]
        return ["tn", "fp", "fn", "tp"]

    def _header(self) -> list[str]:
        return ["class", *METRIC_COLUMNS, *self._confusion_columns()]

    def _rows(self, results: dict[str, Tensor]) -> list[dict[str, Any]]:
        precision, recall, f1 = (results[k].float().cpu() for k in ("precision", "recall", "f1"))
        support = results["stats"][..., 4].long().cpu()  # StatScores: tp, fp, tn, fn, support
        confusion = results["confusion"].long().cpu()
        rows = []
        for i, name in enumerate(self.names):
            row: dict[str, Any] = {"class": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
            row["support"] = int(support[i])
            cells = confusion[i].tolist() if self.single_label else confusion[i].flatten().tolist()  # multilabel: [[tn, fp], [fn, tp]]
            row.update(zip(self._confusion_columns(), cells, strict=False))
            rows.append(row)
        total = int(support.sum())
        if self.single_label:
            accuracy = float(confusion.diag().sum()) / max(total, 1)
            rows.append({"class": "accuracy", "precision": "", "recall": "", "f1": accuracy, "support": total})
        weights = support.float() / max(total, 1)
        scores = dict(zip(METRIC_COLUMNS, (precision, recall, f1), strict=False))
        rows.append({"class": "macro avg", **{k: float(v.mean()) for k, v in scores.items()}, "support": total})
        rows.append({"class": "weighted avg", **{k: float((v * weights).sum()) for k, v in scores.items()}, "support": total})
        return rows

    def markdown(self) -> str:
        """The last report as Markdown: the per-class table, then the confusion matrix (rows: true, columns: predicted)."""
        fmt = lambda v: f"{v:.{self.digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines = ["| class | " + " | ".join(METRIC_COLUMNS) + " |", "|---" * (len(METRIC_COLUMNS) + 1) + "|"]
        lines += ["| " + " | ".join(fmt(row[c]) for c in ["class", *METRIC_COLUMNS]) + " |" for row in self.rows]
        columns = self._confusion_columns()
        title = "Confusion matrix (rows: true class, columns: predicted class)" if self.single_label else "Confusion per label"
        names = self.names if self.single_label else ["tn", "fp", "fn", "tp"]
        lines += ["", f"**{title}**", "", "| true \\ pred | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += ["| " + row["class"] + " | " + " | ".join(str(row[c]) for c in columns) + " |" for row in self.rows[: len(self.names)]]
        return "\n".join(lines) + "\n"

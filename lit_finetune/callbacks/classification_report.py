"""Confusion matrix, PR curves, AUROC, per-class accuracy and confidence histograms of each validation epoch.

All statistics are torchmetrics states reduced by sum across DDP ranks; PR curves and AUROC use
binned thresholds, so memory does not grow with the number of samples.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics import AUROC, Accuracy, ConfusionMatrix, Metric, MetricCollection, PrecisionRecallCurve
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.callbacks._tensorboard import has_tensorboard, tensorboard_writer
from lit_finetune.tasks import Task, has_soft_targets, task_of
from lit_finetune.tasks.segmentation_metrics import class_dice, class_iou


class ConfidenceHistogram(Metric):
    """Counts of the predicted-class probability in ``bins`` equal bins of ``[0, 1]``, for right and wrong predictions."""

    full_state_update = False
    correct: Tensor  # metric states
    wrong: Tensor

    def __init__(self, bins: int = 20) -> None:
        super().__init__()
        self.bins = bins
        self.add_state("correct", torch.zeros(bins), dist_reduce_fx="sum")
        self.add_state("wrong", torch.zeros(bins), dist_reduce_fx="sum")

    def update(self, prob: Tensor, is_correct: Tensor) -> None:
        idx = (prob.float() * self.bins).long().clamp(0, self.bins - 1)
        self.correct += torch.bincount(idx[is_correct], minlength=self.bins).float()
        self.wrong += torch.bincount(idx[~is_correct], minlength=self.bins).float()

    def compute(self) -> dict[str, Tensor]:
        return {"correct": self.correct, "wrong": self.wrong}


class ValidationReport(Callback):
    """Log a report of every validation epoch to TensorBoard (rank zero writes, all ranks reduce): classification
    statistics, or segmentation's pixel statistics. Formerly ``ClassificationReport``, a name that still works.

    Logged (multiclass and binary): ``zz-report/confusion_matrix`` (figure, counts in the cells up to
    ``max_annotated_classes`` classes) and ``zz-report/confusion_matrix_counts`` (text table),
    ``zz-report/pr_curve/<class>`` (TensorBoard PR curves, up to ``max_pr_curves`` classes),
    ``zz-report/auroc/<class>`` and ``zz-report/auroc_macro``, ``zz-report/acc/<class>`` (per-class accuracy),
    ``zz-report/max_prob_correct`` / ``zz-report/max_prob_wrong`` (histograms of the predicted-class
    probability) and ``zz-report/most_confused`` (text: the most frequent true -> predicted mistakes).
    Multilabel tasks get the per-label PR curves, AUROC, accuracy and histograms. Segmentation tasks get
    the pixel confusion matrix (figure and counts, ignored pixels left out), ``zz-report/iou/<class>`` and
    ``zz-report/iou_table`` (IoU, Dice, true and predicted pixels per class).

    Args:
        every_n_epochs: report on every n-th validation epoch (statistics are gathered on those only).
        num_thresholds: bins of the PR curves and AUROC (memory ``num_thresholds * classes * 4`` counts).
        top_confused: rows of the most-confused table.
        max_annotated_classes: write counts into the figure's cells up to this many classes.
        max_pr_curves: PR curves for the first this many classes.
        histogram_bins: bins of the probability histograms.

    Raises:
        ValueError: a count out of range.

    Example::

        trainer = Trainer(callbacks=[ValidationReport(num_thresholds=100)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_thresholds: int = 50,
        top_confused: int = 10,
        max_annotated_classes: int = 20,
        max_pr_curves: int = 20,
        histogram_bins: int = 20,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1, got {every_n_epochs}.")
        if not 2 <= num_thresholds <= 1000:
            raise ValueError(f"`num_thresholds` must be between 2 and 1000, got {num_thresholds}.")
        for name, value in (("top_confused", top_confused), ("max_pr_curves", max_pr_curves), ("histogram_bins", histogram_bins)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if max_annotated_classes < 0:
            raise ValueError(f"`max_annotated_classes` must be >= 0, got {max_annotated_classes}.")
        self.every_n_epochs = every_n_epochs
        self.num_thresholds = num_thresholds
        self.top_confused = top_confused
        self.max_annotated_classes = max_annotated_classes
        self.max_pr_curves = max_pr_curves
        self.histogram_bins = histogram_bins
        self._enabled = True
        self.metrics: MetricCollection | None = None
        self.confusion: Tensor | None = None
        """The confusion matrix logged last (rows: true class, columns: predicted), on the CPU."""

    # ------------------------------------------------------------------ setup
    def _build(self, task: Task) -> MetricCollection | None:
        if (
            task.dense
        ):  # segmentation: the module's own pixel confusion matrix, read at epoch end (PR curves over every pixel would cost too much)
            return None
        args = task.torchmetrics_args()
        threshold: dict[str, Any] = {"threshold": args.pop("threshold")} if "threshold" in args else {}  # binary: the task's decision
        per_class: dict[str, Any] = {"average": None} if task.num_outputs > 1 else {}
        metrics: dict[str, Metric | MetricCollection] = {
            "pr": PrecisionRecallCurve(**args, thresholds=self.num_thresholds),
            "auroc": AUROC(**args, **per_class, thresholds=self.num_thresholds),
            "acc": Accuracy(**args, **per_class, **threshold),
            "hist": ConfidenceHistogram(self.histogram_bins),
        }
        if task.confusion_names() is not None:
            metrics["confusion"] = ConfusionMatrix(**args, **threshold)
        # Each metric keeps its own state: compute groups would share it across different metrics.
        return MetricCollection(metrics, compute_groups=False)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._enabled = has_tensorboard(trainer, type(self).__name__)
        self.task = task_of(pl_module, type(self).__name__)
        self.num_classes = self.task.num_classes
        metrics = self._build(self.task)
        self.metrics = metrics.to(pl_module.device) if metrics is not None else None

    def _report_dense(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Segmentation: the confusion matrix and IoU table from the matrix the module's validation metrics updated."""
        metrics = getattr(pl_module, "val_metrics", None)
        if not isinstance(metrics, MetricCollection) or not any(m.update_called for m in metrics.values(copy_state=False)):
            return
        confusion = self.task.epoch_confusion(metrics)  # type: ignore[attr-defined]  # a dense task: SegmentationTask; a collective
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        self.confusion = confusion.cpu().long()
        names = self.task.confusion_names() or []
        self._log_confusion(writer, trainer.global_step, self.confusion, names)
        self._log_iou_table(writer, trainer.global_step, self.confusion, names)

    def _active(self, trainer: Trainer) -> bool:
        return self._enabled and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    # ------------------------------------------------------------------ hooks
    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.metrics is not None:
            self.metrics.to(pl_module.device).reset()

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._active(trainer) or self.metrics is None or not isinstance(outputs, dict):
            return
        if has_soft_targets(self.task, batch if isinstance(batch, dict) else {keys.TARGET: outputs[keys.TARGET]}):
            return
        probs, target, prob, correct = self.task.report_inputs(outputs[keys.LOGITS].float(), outputs[keys.TARGET])
        for name, metric in self.metrics.items():
            if name == "hist":
                metric.update(prob, correct)
            else:
                metric.update(probs, target)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active(trainer) and self.task.dense:
            self._report_dense(trainer, pl_module)
        if not self._active(trainer) or self.metrics is None:
            return
        results = {name: metric.compute() for name, metric in self.metrics.items()}  # collectives on every rank
        pr_state = self._pr_counts() if "pr" in self.metrics else None  # likewise
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        step = trainer.global_step
        names = self.task.report_names()
        self._log_per_class(writer, step, names, results)
        assert pr_state is not None  # classification reports always build "pr"
        self._log_pr_curves(writer, step, names, pr_state)
        hist = results["hist"]
        edges = torch.linspace(0, 1, self.histogram_bins + 1)
        for kind in ("correct", "wrong"):
            _add_histogram(writer, f"zz-report/max_prob_{kind}", hist[kind].cpu(), edges, step)
        if "confusion" in results:
            self.confusion = results["confusion"].cpu().long()
            self._log_confusion(writer, step, self.confusion, self.task.confusion_names() or names)

    # ------------------------------------------------------------------ writers
    def _pr_counts(self) -> Tensor:
        """Per threshold and class ``[[TN, FP], [FN, TP]]`` counts, summed over ranks: ``(T, C, 2, 2)``."""
        assert self.metrics is not None  # built in setup
        metric: Any = self.metrics["pr"]  # a thresholded PrecisionRecallCurve: its `confmat` state
        with metric.sync_context():
            confmat = metric.confmat.detach().clone()
        return confmat.reshape(confmat.shape[0], -1, 2, 2).cpu()

    def _log_per_class(self, writer: Any, step: int, names: list[str], results: dict[str, Any]) -> None:
        auroc = results["auroc"].reshape(-1).cpu()
        acc = results["acc"].reshape(-1).cpu()
        writer.add_scalar("zz-report/auroc_macro", float(auroc.nanmean()), step)
        for i, name in enumerate(names[: self.max_pr_curves]):
            writer.add_scalar(f"zz-report/auroc/{name}", float(auroc[i]), step)
            writer.add_scalar(f"zz-report/acc/{name}", float(acc[i]), step)

    def _log_pr_curves(self, writer: Any, step: int, names: list[str], counts: Tensor) -> None:
        for i, name in enumerate(names[: self.max_pr_curves]):
            tn, fp, fn, tp = (counts[:, i, r, c].double() for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)))
            precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.ones_like(tp))
            recall = tp / (tp + fn).clamp_min(1)
            writer.add_pr_curve_raw(
                f"zz-report/pr_curve/{name}",
                tp.numpy(),
                fp.numpy(),
                tn.numpy(),
                fn.numpy(),
                precision.numpy(),
                recall.numpy(),
                step,
                num_thresholds=len(tp),
            )

    def _log_iou_table(self, writer: Any, step: int, confusion: Tensor, names: list[str]) -> None:
        """Segmentation: ``zz-report/iou/<class>`` scalars and ``zz-report/iou_table`` (IoU, Dice, pixels of each class, then
        the means over the classes that occur: ``miou`` and ``dice``; binary: the foreground row is ``iou_fg``, ``dice_fg``)."""
        iou, dice = class_iou(confusion), class_dice(confusion)
        pixels = confusion.sum(dim=1)
        foreground = 1 if getattr(self.task, "binary", False) else None
        rows = []
        for i, name in enumerate(names):
            if not bool(iou[i].isnan()):
                writer.add_scalar(f"zz-report/iou/{name}", float(iou[i]), step)
            label = f"{name} (foreground: `iou_fg`, `dice_fg`)" if i == foreground else name
            rows.append(f"| {label} | {float(iou[i]):.4f} | {float(dice[i]):.4f} | {int(pixels[i])} | {int(confusion[:, i].sum())} |")
        mean_iou, mean_dice = (float(torch.nan_to_num(v.nanmean(), nan=0.0)) for v in (iou, dice))
        rows.append(
            f"| mean over classes (`miou`, `dice`) | {mean_iou:.4f} | {mean_dice:.4f} | {int(pixels.sum())} | {int(confusion.sum())} |"
        )
        header = "| class | IoU | Dice | true pixels | predicted pixels |\n|---|---|---|---|---|\n"
        writer.add_text("zz-report/iou_table", header + "\n".join(rows), step)

    def _log_confusion(self, writer: Any, step: int, confusion: Tensor, names: list[str]) -> None:
        figure = confusion_figure(confusion, names, annotate=len(names) <= self.max_annotated_classes)
        writer.add_figure("zz-report/confusion_matrix", figure, step)
        header = "| true \\ pred | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 1) + "\n"
        rows = "\n".join(f"| {names[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(confusion.tolist()))
        writer.add_text("zz-report/confusion_matrix_counts", header + rows, step)
        off = confusion.clone()
        off.fill_diagonal_(0)
        count = min(self.top_confused, int((off > 0).sum()))
        values, flat = off.flatten().topk(count) if count else (torch.empty(0), torch.empty(0, dtype=torch.long))
        table = "| true | predicted | count |\n|---|---|---|\n" + "\n".join(
            f"| {names[int(f) // len(names)]} | {names[int(f) % len(names)]} | {int(v)} |" for v, f in zip(values, flat, strict=False)
        )
        writer.add_text("zz-report/most_confused", table if count else "No mistakes.", step)


def confusion_figure(confusion: Tensor, names: list[str], annotate: bool = True) -> Any:
    """A matplotlib figure of a confusion matrix, colored by row-normalized counts (at most about 800 px)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(10.0, 2.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    rates = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp_min(1)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(n) if n <= 50 else []
    ax.set_xticks(list(ticks), [names[i] for i in ticks], rotation=90 if n > 10 else 0, fontsize=8)
    ax.set_yticks(list(ticks), [names[i] for i in ticks], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if annotate:
        for (i, j), value in zip(
            torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(), confusion.flatten().tolist(), strict=False
        ):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def _add_histogram(writer: Any, tag: str, counts: Tensor, edges: Tensor, step: int) -> None:
    centers = (edges[:-1] + edges[1:]) / 2
    total = float(counts.sum())
    if total == 0:
        return
    writer.add_histogram_raw(
        tag,
        min=float(edges[0]),
        max=float(edges[-1]),
        num=total,
        sum=float((centers * counts).sum()),
        sum_squares=float((centers.square() * counts).sum()),
        bucket_limits=edges[1:].tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


ClassificationReport = ValidationReport
"""The former name of :class:`ValidationReport`, kept for configs and imports that use it."""

"""A tiny SegmentationModule fit: the loss moves, and the diagnostics callbacks give the right values or refuse clearly.

Best/worst samples are checked against per-pixel cross-entropy computed here from the final weights (mean over the
labeled pixels of each image), gradient statistics against ``p.grad`` recorded at each step.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from seg_model_helpers import IGNORE, ShapesDataset, loader, tiny_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn import functional as F

from lit_finetune import BestWorstSamples, DataTiming, GradCAM, GradientStats, HParamsSummary, NanGuard, ValidationReport
from lit_finetune.tasks import segmentation_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


class GradNorms(Callback):
    """The norm of all gradients at each optimizer step, from ``p.grad``."""

    def __init__(self) -> None:
        self.norms: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach().double().flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms[trainer.global_step] = torch.cat(grads).norm().item()


class ConfusionCounts(Callback):
    """How many pixel confusion matrices each validation step computes (metrics, per-class IoU and report together).

    Placed last: its batch-end hook runs after every other callback's.
    """

    def __init__(self) -> None:
        self.calls, self.per_step = 0, []

    def count(self, function):
        def counted(*args, **kwargs):
            self.calls += 1
            return function(*args, **kwargs)

        return counted

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.start = self.calls

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.per_step.append(self.calls - self.start)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segfit")
    model = tiny_module(palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)], loss=nn.CrossEntropyLoss(ignore_index=IGNORE))
    best_worst, report, norms, counts = BestWorstSamples(k=2, tile_size=32), ValidationReport(), GradNorms(), ConfusionCounts()
    callbacks = [best_worst, report, GradientStats(), NanGuard(), DataTiming(), HParamsSummary(), norms, counts]
    trainer = Trainer(
        max_epochs=4,
        logger=TensorBoardLogger(str(tmp), name="seg"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segmentation_metrics, "confusion_counts", counts.count(segmentation_metrics.confusion_counts))
        trainer.fit(model, loader(ShapesDataset(8)), loader(ShapesDataset(4, seed=1)))
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    return {
        "trainer": trainer,
        "events": events,
        "best_worst": best_worst,
        "report": report,
        "model": model,
        "grad_norms": norms.norms,
        "confusions_per_step": counts.per_step,
    }


def test_the_loss_moves_down(fitted):
    steps = [e.value for e in fitted["events"].Scalars("train/loss")]
    assert len(steps) == 8 and steps[-1] < steps[0]
    assert {"val/miou", "val/dice", "val/pixel_acc", "val/iou/0"} <= set(fitted["events"].Tags()["scalars"])


def test_best_worst_logs_image_and_mask_overlays(fitted):
    tags = fitted["events"].Tags()["images"]
    assert "zz-best_worst/val/worst" in tags and "zz-best_worst/train/best" in tags
    image = fitted["events"].Images("zz-best_worst/val/worst")[-1]
    # Two samples, three tiles each (image, true mask, predicted mask), in one row.
    assert image.width > 5 * 32
    # The samples of highest and lowest loss: per-pixel cross-entropy averaged over each image's labeled pixels.
    val = ShapesDataset(4, seed=1)
    with torch.no_grad():
        logits = fitted["model"].eval()(val.images)["logits"]
    pixels = F.cross_entropy(logits, val.masks, ignore_index=IGNORE, reduction="none")
    labeled = val.masks != IGNORE
    losses = (pixels * labeled).sum(dim=(1, 2)) / labeled.sum(dim=(1, 2))
    for kind, descending in (("worst", True), ("best", False)):
        selected = fitted["best_worst"].selected["val"][kind]
        assert [i for i, _ in selected] == losses.argsort(descending=descending)[:2].tolist(), kind
        torch.testing.assert_close(torch.tensor([score for _, score in selected]), losses[[i for i, _ in selected]], rtol=1e-4, atol=1e-6)


def test_report_writes_pixel_confusion_and_iou_table(fitted):
    confusion = fitted["report"].confusion
    labeled = int((ShapesDataset(4, seed=1).masks != 255).sum())
    assert confusion.shape == (3, 3) and int(confusion.sum()) == labeled  # every labeled pixel once, ignored ones never
    tags = fitted["events"].Tags()
    assert "zz-report/iou/0" in tags["scalars"] and "zz-report/confusion_matrix" in tags["images"]
    assert any(t.startswith("zz-report/iou_table") for t in tags["tensors"])


def test_one_confusion_matrix_per_validation_step_serves_metrics_per_class_iou_and_report(fitted):
    assert fitted["confusions_per_step"] == [1] * 4  # 4 epochs of one validation step (4 images, batch 4)
    # The logged per-class IoU and mIoU of the last epoch are those of the report's matrix.
    confusion = fitted["report"].confusion.double()
    iou = confusion.diagonal() / (confusion.sum(0) + confusion.sum(1) - confusion.diagonal())
    events = fitted["events"]
    for c in range(3):
        assert events.Scalars(f"val/iou/{c}")[-1].value == pytest.approx(float(iou[c]), abs=1e-6)
    assert events.Scalars("val/miou")[-1].value == pytest.approx(float(iou.nanmean()), abs=1e-6)


def test_gradient_stats_equal_the_gradients(fitted):
    logged = {e.step: e.value for e in fitted["events"].Scalars("zz-grad/global_norm")}
    assert sorted(fitted["grad_norms"]) == list(range(8))  # 2 steps an epoch, 4 epochs
    for step, norm in fitted["grad_norms"].items():
        assert logged[step] == pytest.approx(norm, rel=1e-5), step


def test_timing_counts_images_not_pixels(fitted):
    # 8 training images a epoch; the rate times the logged time per batch gives the batch size back (4).
    rows = {e.step: e.value for e in fitted["events"].Scalars("zz-perf/samples_per_sec")}
    wait = {e.step: e.value for e in fitted["events"].Scalars("zz-perf/data_wait_ms")}
    step = {e.step: e.value for e in fitted["events"].Scalars("zz-perf/step_ms")}
    assert len(rows) == 8
    for s, rate in rows.items():
        assert rate * (wait[s] + step[s]) / 1000 == pytest.approx(4, rel=1e-3)


def test_gradcam_refuses_segmentation_before_training(tmp_path):
    trainer = Trainer(max_epochs=1, logger=TensorBoardLogger(str(tmp_path)), callbacks=[GradCAM()], enable_progress_bar=False)
    with pytest.raises(ValueError, match="segmentation modules"):
        trainer.fit(tiny_module(), loader(ShapesDataset(4)), loader(ShapesDataset(4)))

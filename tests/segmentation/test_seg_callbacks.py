"""A tiny SegmentationModule fit: the loss moves, and the diagnostics callbacks work or refuse clearly."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from seg_model_helpers import ShapesDataset, loader, tiny_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_finetune import BestWorstSamples, ValidationReport, DataTiming, GradCAM, GradientStats, HParamsSummary, NanGuard

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segfit")
    model = tiny_module(palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    best_worst, report = BestWorstSamples(k=2, tile_size=32), ValidationReport()
    callbacks = [best_worst, report, GradientStats(), NanGuard(), DataTiming(), HParamsSummary()]
    trainer = Trainer(
        max_epochs=4, logger=TensorBoardLogger(str(tmp), name="seg"), callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1, num_sanity_val_steps=0,
    )
    losses = []
    trainer.fit(model, loader(ShapesDataset(8)), loader(ShapesDataset(4, seed=1)))
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    return {"trainer": trainer, "events": events, "best_worst": best_worst, "report": report, "model": model}


def test_the_loss_moves_down(fitted):
    steps = [e.value for e in fitted["events"].Scalars("train/loss")]
    assert len(steps) == 8 and steps[-1] < steps[0]
    assert {"val/miou", "val/dice", "val/pixel_acc", "val/iou/0"} <= set(fitted["events"].Tags()["scalars"])


def test_best_worst_logs_image_and_mask_overlays(fitted):
    tags = fitted["events"].Tags()["images"]
    assert "best_worst/val/worst" in tags and "best_worst/train/best" in tags
    image = fitted["events"].Images("best_worst/val/worst")[-1]
    # Two samples, three tiles each (image, true mask, predicted mask), in one row.
    assert image.width > 5 * 32
    selected = fitted["best_worst"].selected["val"]["worst"]
    assert len(selected) == 2 and selected[0][1] >= selected[1][1]


def test_report_writes_pixel_confusion_and_iou_table(fitted):
    confusion = fitted["report"].confusion
    labeled = int((ShapesDataset(4, seed=1).masks != 255).sum())
    assert confusion.shape == (3, 3) and int(confusion.sum()) == labeled  # every labeled pixel once, ignored ones never
    tags = fitted["events"].Tags()
    assert "report/iou/0" in tags["scalars"] and "report/confusion_matrix" in tags["images"]
    assert any(t.startswith("report/iou_table") for t in tags["tensors"])


def test_gradient_stats_and_timing_log_as_for_classifiers(fitted):
    scalars = fitted["events"].Tags()["scalars"]
    assert any(t.startswith("grad") for t in scalars), scalars
    assert "perf/data_wait_fraction" in scalars and "perf/samples_per_sec" in scalars, scalars


def test_gradcam_refuses_segmentation_before_training(tmp_path):
    trainer = Trainer(max_epochs=1, logger=TensorBoardLogger(str(tmp_path)), callbacks=[GradCAM()], enable_progress_bar=False)
    with pytest.raises(ValueError, match="segmentation modules"):
        trainer.fit(tiny_module(), loader(ShapesDataset(4)), loader(ShapesDataset(4)))

"""Without a TensorBoardLogger every callback skips its pictures with one warning, and scalars still reach the logger."""

from __future__ import annotations

import warnings

from callback_helpers import make_datamodule, make_model, make_trainer
from lightning.pytorch.loggers import CSVLogger

from lit_finetune.callbacks.best_worst import BestWorstSamples
from lit_finetune.callbacks.classification_report import ValidationReport
from lit_finetune.callbacks.data_timing import DataTiming
from lit_finetune.callbacks.gradcam import GradCAM
from lit_finetune.callbacks.gradient_stats import GradientStats
from lit_finetune.callbacks.hparams import HParamsSummary
from lit_finetune.callbacks.nan_guard import NanGuard


def test_csv_logger_only(tmp_path, image_root):
    callbacks = [BestWorstSamples(), GradientStats(), NanGuard(), GradCAM(), ValidationReport(), DataTiming(), HParamsSummary()]
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = make_trainer(tmp_path, callbacks, logger=logger, limit_train_batches=2, limit_val_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_model(), datamodule=make_datamodule(image_root))
    messages = [str(w.message) for w in caught if "no TensorBoardLogger" in str(w.message)]
    for name in ("BestWorstSamples", "GradCAM", "ValidationReport", "HParamsSummary"):
        assert sum(m.startswith(name) for m in messages) == 1, name
    assert callbacks[3].last_heatmaps is None and callbacks[4].confusion is None  # skipped, not computed
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "zz-grad/global_norm" in header and "zz-perf/data_wait_fraction" in header

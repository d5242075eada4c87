"""Lightning callbacks: diagnostics, fine-tuning schedules, checkpoints and prediction output. One a file."""

from lit_finetune.callbacks.best_worst import BestWorstSamples
from lit_finetune.callbacks.classification_report import ClassificationReport, ValidationReport
from lit_finetune.callbacks.data_timing import DataTiming
from lit_finetune.callbacks.gradcam import GradCAM
from lit_finetune.callbacks.gradient_stats import GradientStats
from lit_finetune.callbacks.hparams import HParamsSummary
from lit_finetune.callbacks.interrupt_checkpoint import InterruptCheckpoint
from lit_finetune.callbacks.mask_writer import SegmentationMaskWriter
from lit_finetune.callbacks.nan_guard import NanGuard
from lit_finetune.callbacks.prediction_writer import PredictionCSVWriter
from lit_finetune.callbacks.resumable_checkpoint import ResumableModelCheckpoint
from lit_finetune.callbacks.rng_state import RNGStateCheckpoint
from lit_finetune.callbacks.test_report import TestReport
from lit_finetune.callbacks.unfreeze import UnfreezeSchedule

__all__ = [
    "BestWorstSamples",
    "ClassificationReport",
    "DataTiming",
    "GradCAM",
    "GradientStats",
    "HParamsSummary",
    "InterruptCheckpoint",
    "NanGuard",
    "PredictionCSVWriter",
    "RNGStateCheckpoint",
    "TestReport",
    "SegmentationMaskWriter",
    "ResumableModelCheckpoint",
    "UnfreezeSchedule",
    "ValidationReport",
]

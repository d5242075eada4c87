"""lit-finetune: fine-tune torchvision models on your own images with PyTorch Lightning."""

from lit_finetune import keys
from lit_finetune.callbacks import (
    BatchNormMomentum,
    BestWorstSamples,
    ClassificationReport,
    DataTiming,
    GradCAM,
    GradientStats,
    HParamsSummary,
    InterruptCheckpoint,
    NanGuard,
    PredictionCSVWriter,
    ResumableModelCheckpoint,
    RNGStateCheckpoint,
    SegmentationMaskWriter,
    UnfreezeSchedule,
    ValidationReport,
)
from lit_finetune.data import ClassificationDataModule, ImageFolderDataModule, SegmentationDataModule
from lit_finetune.data.check import check_data
from lit_finetune.export import export_checkpoint, load_exported
from lit_finetune.models.backbones import available_backbones, create_backbone
from lit_finetune.models.heads import ClassifierHead
from lit_finetune.models.segmenters import EncoderDecoderSegmenter, TorchvisionSegmenter, build_segmenter, segmentation_models
from lit_finetune.models.stages import backbone_stages, register_stages
from lit_finetune.models.weights import AtomicCheckpointIO, UnsafeCheckpointError, load_state_dict_file, load_weights
from lit_finetune.modules.base import TaskLightningModule
from lit_finetune.modules.classifier import FinetuneClassifier
from lit_finetune.modules.segmentation import SegmentationModule
from lit_finetune.optim.lr_finder import suggest_lr
from lit_finetune.optim.schedulers import StepDecayLR, WarmupCosineLR
from lit_finetune.tasks import SegmentationTask

__version__ = "0.1.0"

__all__ = [
    "AtomicCheckpointIO",
    "BatchNormMomentum",
    "BestWorstSamples",
    "ClassificationReport",
    "ClassificationDataModule",
    "ClassifierHead",
    "DataTiming",
    "EncoderDecoderSegmenter",
    "FinetuneClassifier",
    "GradCAM",
    "GradientStats",
    "HParamsSummary",
    "ImageFolderDataModule",
    "InterruptCheckpoint",
    "NanGuard",
    "PredictionCSVWriter",
    "RNGStateCheckpoint",
    "ResumableModelCheckpoint",
    "SegmentationDataModule",
    "SegmentationMaskWriter",
    "SegmentationModule",
    "SegmentationTask",
    "StepDecayLR",
    "TaskLightningModule",
    "TorchvisionSegmenter",
    "UnfreezeSchedule",
    "UnsafeCheckpointError",
    "WarmupCosineLR",
    "available_backbones",
    "backbone_stages",
    "build_segmenter",
    "check_data",
    "create_backbone",
    "export_checkpoint",
    "keys",
    "load_exported",
    "load_state_dict_file",
    "load_weights",
    "register_stages",
    "segmentation_models",
    "suggest_lr",
    "ValidationReport",
]

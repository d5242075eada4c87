"""Data sources (class folders, labels CSV, image+mask pairs, demos), datasets of dicts, the data modules, transforms."""

from lit_finetune.data.class_folders import ClassFolderSource
from lit_finetune.data.csv_source import LabelsCsvSource
from lit_finetune.data.datamodule import ClassificationDataModule, ImageFolderDataModule
from lit_finetune.data.demo import write_digits
from lit_finetune.data.demo_source import DemoSource
from lit_finetune.data.folder import IMAGE_EXTENSIONS, ImageDataset, load_rgb, scan_image_folder
from lit_finetune.data.labelled import LabelledSource, LabelledSplits, split_validation, stratified_split
from lit_finetune.data.mixing import BatchMixer, MixingCollate
from lit_finetune.data.sampling import BalancedSampler, balanced_weights
from lit_finetune.data.segmentation import SegmentationDataModule, SegmentationDataset
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.data.splits import seeded_split
from lit_finetune.data.transforms import (
    AUGMENT_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    default_preprocessing,
    eval_transform,
    train_transform,
)

__all__ = [
    "AUGMENT_PRESETS",
    "BalancedSampler",
    "BatchMixer",
    "ClassFolderSource",
    "ClassificationDataModule",
    "DemoSource",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageFolderDataModule",
    "LabelledSource",
    "LabelledSplits",
    "LabelsCsvSource",
    "MixingCollate",
    "Preprocessing",
    "balanced_weights",
    "SegmentationDataModule",
    "SegmentationDataset",
    "default_preprocessing",
    "eval_transform",
    "load_rgb",
    "scan_image_folder",
    "seeded_split",
    "split_validation",
    "stratified_split",
    "train_transform",
    "write_digit_segmentation",
    "write_digits",
]

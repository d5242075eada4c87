"""Datasets that return dicts, the ImageFolder DataModule, transforms and demo data."""

from lit_finetune.data.datamodule import ImageFolderDataModule, stratified_split
from lit_finetune.data.demo import write_digits
from lit_finetune.data.folder import IMAGE_EXTENSIONS, ImageDataset, load_rgb, scan_image_folder
from lit_finetune.data.mixing import BatchMixer, MixingCollate
from lit_finetune.data.sampling import BalancedSampler, balanced_weights
from lit_finetune.data.segmentation import SegmentationDataModule, SegmentationDataset
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.data.transforms import AUGMENT_PRESETS, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, default_preprocessing, eval_transform, train_transform

__all__ = [
    "AUGMENT_PRESETS",
    "BalancedSampler",
    "BatchMixer",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageFolderDataModule",
    "MixingCollate",
    "Preprocessing",
    "balanced_weights",
    "SegmentationDataModule",
    "SegmentationDataset",
    "default_preprocessing",
    "eval_transform",
    "load_rgb",
    "scan_image_folder",
    "stratified_split",
    "train_transform",
    "write_digit_segmentation",
    "write_digits",
]

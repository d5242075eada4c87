"""lit-finetune: fine-tune torchvision models on your own images with PyTorch Lightning."""

from lit_finetune.backbones import available_backbones, create_backbone
from lit_finetune.data import ImageFolderDataModule
from lit_finetune.heads import ClassifierHead
from lit_finetune.module import FinetuneClassifier

__version__ = "0.1.0"

__all__ = [
    "ClassifierHead",
    "FinetuneClassifier",
    "ImageFolderDataModule",
    "available_backbones",
    "create_backbone",
]

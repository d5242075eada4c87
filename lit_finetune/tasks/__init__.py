"""The task layer: one object per task (targets, default loss, predictions, metrics, captions)."""

from lit_finetune.tasks.base import Prediction, Task, TaskModule, has_soft_targets, task_of
from lit_finetune.tasks.classification import TASKS, BinaryTask, MulticlassTask, MultilabelTask, build_task
from lit_finetune.tasks.segmentation import SegmentationTask, build_segmentation_task

__all__ = [
    "TASKS",
    "BinaryTask",
    "MulticlassTask",
    "MultilabelTask",
    "Prediction",
    "SegmentationTask",
    "Task",
    "TaskModule",
    "build_segmentation_task",
    "build_task",
    "has_soft_targets",
    "task_of",
]

"""The task layer: one object per task (targets, default loss, predictions, metrics, captions)."""

from lit_finetune.tasks.base import Prediction, Task, TaskModule, TaskModuleProtocol, has_soft_targets, loss_weight, task_of
from lit_finetune.tasks.classification import (
    TASKS,
    BinaryTask,
    MulticlassTask,
    MultilabelTask,
    SingleLabelTask,
    build_task,
    task_type,
)
from lit_finetune.tasks.segmentation import SegmentationTask, build_segmentation_task

__all__ = [
    "TASKS",
    "BinaryTask",
    "MulticlassTask",
    "MultilabelTask",
    "Prediction",
    "SegmentationTask",
    "SingleLabelTask",
    "Task",
    "TaskModule",
    "TaskModuleProtocol",
    "build_segmentation_task",
    "build_task",
    "has_soft_targets",
    "loss_weight",
    "task_of",
    "task_type",
]

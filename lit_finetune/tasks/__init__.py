"""The task layer: one object per task (targets, default loss, predictions, metrics, captions)."""

from lit_finetune.tasks.base import Prediction, Task, TaskModule, task_of
from lit_finetune.tasks.classification import TASKS, BinaryTask, MulticlassTask, MultilabelTask, build_task

__all__ = ["TASKS", "BinaryTask", "MulticlassTask", "MultilabelTask", "Prediction", "Task", "TaskModule", "build_task", "task_of"]

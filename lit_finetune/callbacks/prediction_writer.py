"""Write the predictions of ``trainer.predict`` to a CSV file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.tasks import task_of


class PredictionCSVWriter(BasePredictionWriter):
    """Write the prediction of each image: ``index``, ``path``, then the task's columns.

    Multiclass and binary: ``pred_index``, ``pred_class`` (the class name when the model knows its
    classes), ``probability`` (of the predicted class). Multilabel: ``labels`` (every label above its
    threshold, space-separated), ``probabilities`` (theirs, in the same order), ``top_class`` and
    ``top_probability``. Under DDP each rank writes its own file
    with a ``.rank<N>`` suffix.

    Args:
        output_path: the CSV file; None: ``predictions.csv`` in the trainer's log folder.

    Example::

        trainer = Trainer(callbacks=[PredictionCSVWriter("preds.csv")])
        trainer.predict(model, datamodule=dm)
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path
        self.written: Path | None = None

    def _path(self, trainer: Trainer) -> Path:
        path = Path(self.output_path) if self.output_path else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        return path

    @override
    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any) -> None:
        # One list per predict dataloader when there are several.
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        task = task_of(pl_module, type(self).__name__)
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "path", *task.prediction_columns()])
            for batch in batches:
                prediction = batch[keys.PREDICTION]
                for i, (index, file) in enumerate(zip(torch.as_tensor(batch[keys.INDEX]).tolist(), batch[keys.PATH], strict=False)):
                    writer.writerow([index, file, *task.prediction_row(prediction, i)])
        tmp.replace(path)
        self.written = path
        print(f"Predictions written to {path}")

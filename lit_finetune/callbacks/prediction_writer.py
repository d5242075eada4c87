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


class PredictionCSVWriter(BasePredictionWriter):
    """Write ``path, predicted class, probability`` for each image predicted.

    Columns: ``index``, ``path``, ``pred_index``, ``pred_class`` (the class name when the model knows
    its classes), ``probability`` (of the predicted class). Under DDP each rank writes its own file
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
        names = getattr(pl_module, "class_names", None)
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "path", "pred_index", "pred_class", "probability"])
            for batch in batches:
                for index, file, pred, prob in zip(
                    torch.as_tensor(batch[keys.INDEX]).tolist(), batch[keys.PATH], batch["pred"].tolist(), batch["prob"].tolist()
                ):
                    writer.writerow([index, file, pred, names[pred] if names else pred, f"{prob:.6f}"])
        tmp.replace(path)
        self.written = path
        print(f"Predictions written to {path}")

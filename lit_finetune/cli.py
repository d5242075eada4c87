"""The ``lit-finetune`` command line: LightningCLI with fine-tuning defaults.

``lit-finetune fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and
``predict`` take the same config plus ``--ckpt_path``. Defaults added to every run: a
TensorBoard logger under ``runs/``, ModelCheckpoint (best ``val/acc`` and ``last.ckpt``),
LearningRateMonitor (with momentum and weight decay) and a CSV writer for ``predict``.
Each is configurable: ``--checkpoint.monitor val/loss``, ``--lr_monitor.logging_interval step``,
``--predictions.output_path preds.csv``.
"""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_finetune.callbacks.prediction_writer import PredictionCSVWriter
from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.module import FinetuneClassifier

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lit_finetune", "default_hp_metric": False},
    },
    "max_epochs": 10,
}


class FinetuneCLI(LightningCLI):
    """LightningCLI that links data and model options and adds the default callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:02d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.log_momentum": True, "lr_monitor.log_weight_decay": True})
        parser.add_lightning_class_args(PredictionCSVWriter, "predictions")
        # The data module picks default transforms from the model's weights ...
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("model.weights", "data.weights")
        # ... and the model learns its classes from the data.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")


def build_cli(args: list[str] | None = None, run: bool = True) -> FinetuneCLI:
    """Parse ``args`` (``sys.argv`` when None), build the model, data and trainer, and run the subcommand."""
    return FinetuneCLI(
        FinetuneClassifier,
        ImageFolderDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lit-finetune`` and ``python cli.py``."""
    build_cli(args)


if __name__ == "__main__":
    main(sys.argv[1:])

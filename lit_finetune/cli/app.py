"""The ``lit-finetune`` command line: LightningCLI with fine-tuning defaults.

``lit-finetune fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and
``predict`` take the same config plus ``--ckpt_path``. Defaults added to every run: a
TensorBoard logger under ``runs/``, ModelCheckpoint (best value of the task's metric: ``val/acc``, ``val/map``,
``val/auroc`` or ``val/miou``, unless ``--checkpoint.monitor`` names another; and ``last.ckpt``),
a learning-rate monitor (with momentum and weight decay, under ``zz-optim/``) and a CSV writer for ``predict``.
``predict`` runs without a logger and writes into ``<run>/predict/<checkpoint>/`` (see :func:`predict_folder`).
Each is configurable: ``--checkpoint.monitor val/loss``, ``--lr_monitor.logging_interval step``,
``--predictions.output_path preds.csv``.

For reliable runs (see docs/reliability.md): ``last.ckpt`` is refreshed every epoch
(``ResumableModelCheckpoint``), checkpoints hold the random generators' states (``RNGStateCheckpoint``)
and are written atomically (``AtomicCheckpointIO``), an interrupted run writes ``last-interrupted.ckpt``
(``InterruptCheckpoint``), and ``--ckpt_path last`` resumes the newest run of the configured logger.
``lit-finetune export``, ``lit-finetune check-data`` and ``lit-finetune optimize`` have parsers of their own.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_finetune.callbacks.batchnorm import BatchNormMomentum
from lit_finetune.callbacks.interrupt_checkpoint import InterruptCheckpoint
from lit_finetune.callbacks.lr_monitor import GroupedLearningRateMonitor
from lit_finetune.callbacks.prediction_writer import PredictionCSVWriter
from lit_finetune.callbacks.resumable_checkpoint import ResumableModelCheckpoint
from lit_finetune.callbacks.rng_state import RNGStateCheckpoint
from lit_finetune.callbacks.test_report import TestReport
from lit_finetune.cli.noise import quiet_foreign_noise
from lit_finetune.cli.option_links import config_files, option_links, refuse_linked_options
from lit_finetune.cli.runs import DEFAULT_MODEL, log_beside_checkpoint, monitor_model_metric, resume_logger_version
from lit_finetune.data.datamodule import ClassificationDataModule
from lit_finetune.modules.classifier import FinetuneClassifier

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lit_finetune.cli.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lit_finetune", "default_hp_metric": False},
    },
    "max_epochs": 10,
    # Checkpoints are written to a temporary file next to the target and renamed: never half-written.
    "plugins": [{"class_path": "lit_finetune.models.weights.AtomicCheckpointIO"}],
}
EXTRA_SUBCOMMANDS = {
    "export": "Export a checkpoint for inference (weights, model.json, TorchScript/ONNX).",
    "check-data": "Find unreadable images under a data folder.",
    "optimize": "Write a config's data set as LitData shards (a folder or s3://...) for the streaming data modules.",
}

DEFAULT_DATA = "lit_finetune.data.datamodule.ClassificationDataModule"
DEBUG_ENV = "LIT_FINETUNE_DEBUG"
EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")
PACKAGE_DIR = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)


def yaml_location(paths: list[str], key: str) -> str | None:
    """``file:line`` of a dotted key (or of its deepest part present) in the YAML files; the last file wins.

    ``init_args`` levels are looked through, so ``model.lr_scheduler.gamma`` finds
    ``model: {lr_scheduler: {init_args: {gamma: ...}}}``.
    """
    parts = key.split(".")
    best: tuple[int, str] | None = None
    for path in paths:
        try:
            node = yaml.compose(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        depth, line = 0, None
        while isinstance(node, yaml.MappingNode) and depth < len(parts):
            children = {k.value: (k, v) for k, v in node.value}
            if parts[depth] in children:
                key_node, node = children[parts[depth]]
                line, depth = key_node.start_mark.line + 1, depth + 1
            elif "init_args" in children:
                node = children["init_args"][1]
            else:
                break
        if line is not None and (best is None or depth >= best[0]):
            best = (depth, f"{path}:{line}")
    return best[1] if best else None


def known_keys(parser) -> list[str]:
    """Dotted option names of a parser and of its subcommands' parsers (``data.batch_size``, ...)."""
    keys = []
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and action.dest in ("subcommand", "subcommands"):
            for sub in choices.values():
                keys += known_keys(sub)
        elif "." in action.dest:
            keys.append(action.dest)
    return keys


class FinetuneArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are short: the message, the YAML file and line, the closest options.

    The usage dump of every option is left out; ``--help`` prints it.
    """

    config_paths: list[str] = []

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        lines = message.strip().splitlines()
        text = "\n".join(lines[:6] + (["  ..."] if len(lines) > 6 else []))
        for key in re.findall(r"""['"]((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)['"]""", message):
            key = key.removeprefix(f"{self.prog.split()[-1]}.")
            location = yaml_location(self.config_paths, key)
            if location:
                text += f"\n  in {location}"
            valid = sorted(set(known_keys(self)))
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=3, cutoff=0.75)
                if close:
                    text += "\n  did you mean " + " or ".join(f"`{k}`" for k in close) + "?"
            break
        prog = self.prog.replace(" [options]", "")
        subcommand = re.search(r"Subcommand '([\w-]+)'", message)
        prog = f"{prog} {subcommand.group(1)}" if subcommand and not prog.endswith(subcommand.group(1)) else prog
        sys.stderr.write(f"error: {text}\n  (all options: `{prog} --help`)\n")
        self.exit(2)


class FinetuneCLI(LightningCLI):
    """LightningCLI that links data and model options and adds the default callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # With a `class_path` (subclass mode), options live under `init_args`; a section without one is the
        # classifier / image folders.
        model = "model.init_args." if self.subclass_mode_model else "model."
        data = "data.init_args." if self.subclass_mode_data else "data."
        if self.subclass_mode_model:
            parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})
        parser.add_lightning_class_args(ResumableModelCheckpoint, "checkpoint")
        # monitor and filename left unset are filled in from the task (monitor_model_metric).
        parser.set_defaults({"checkpoint.mode": "max", "checkpoint.save_last": True, "checkpoint.auto_insert_metric_name": False})
        parser.add_lightning_class_args(GroupedLearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.log_momentum": True, "lr_monitor.log_weight_decay": True})
        parser.add_lightning_class_args(PredictionCSVWriter, "predictions")
        parser.add_lightning_class_args(RNGStateCheckpoint, "rng_state")
        parser.add_lightning_class_args(InterruptCheckpoint, "interrupt_checkpoint")
        parser.add_lightning_class_args(TestReport, "test_report")  # acts in `test` only: test_report.csv/.md
        parser.add_lightning_class_args(BatchNormMomentum, "batchnorm")  # fit: warns when BatchNorm statistics barely move
        for link in option_links(self.subclass_mode_model):
            link.add_to(parser, model, data)
        parser.add_argument(
            "--lr_find",
            type=bool,
            default=False,
            help="fit only: run Lightning's learning-rate finder first; its suggestion becomes model.head_lr "
            "(plot: lr_find.png in the log folder).",
        )
        parser.add_argument(
            "--lr_find_steps",
            type=int,
            default=100,
            help="training steps of the --lr_find sweep, one LR each from 1e-6 to 1 (at least 20 for a suggestion).",
        )

    def before_fit(self) -> None:
        if not self.config[self.subcommand].get("lr_find"):
            return
        from lit_finetune.optim.lr_finder import suggest_lr

        plot = Path(self.trainer.log_dir or ".") / "lr_find.png"
        if self.trainer.is_global_zero:  # every rank runs the sweep; one writes the plot
            plot.parent.mkdir(parents=True, exist_ok=True)
        steps = self.config[self.subcommand].get("lr_find_steps", 100)
        if steps < 20:
            raise SystemExit(f"--lr_find_steps {steps}: the sweep needs at least 20 steps to suggest an LR.")
        lr = suggest_lr(
            self.trainer,
            self.model,
            datamodule=self.datamodule,
            num_training=steps,
            plot_path=str(plot) if self.trainer.is_global_zero else None,
        )
        if not self.trainer.is_global_zero:
            return
        if lr is None:
            print(
                "lr_find: no suggestion (the sweep ended before enough steps: it runs up to --lr_find_steps training steps "
                "within trainer.max_epochs, and stops early when the loss diverges). Training goes on with the configured LR."
            )
        else:
            print(f"lr_find: head_lr = {lr} (plot: {plot})")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, list):
            FinetuneArgumentParser.config_paths = config_files(argv)
            refuse_linked_options(parser, argv, option_links(self.subclass_mode_model))
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        monitor_model_metric(config)
        if not self.subcommand:
            return
        if self.subcommand in EVALUATION_SUBCOMMANDS:
            log_beside_checkpoint(config, self.subcommand)
        elif config.get("ckpt_path") == "last":
            resume_logger_version(config)


def names_class_path(args: list[str]) -> bool:
    """Whether a command line (or one of its ``--config`` files) gives ``model`` or ``data`` a ``class_path``.

    ``--model.help X`` / ``--data.help X`` count too: the help of a class exists in subclass mode only.
    """
    for i, arg in enumerate(args):
        if arg.startswith(("--model.class_path", "--data.class_path", "--model=", "--data=", "--model.help", "--data.help")):
            return True
        if arg in ("--model", "--data") and i + 1 < len(args):
            return True
    return bool(selected_classes(args))


def selected_classes(args: list[str]) -> dict[str, str]:
    """The ``class_path`` of ``model`` and ``data`` set in the ``--config`` files (the last file wins) or on the line."""
    selected: dict[str, str] = {}
    for path in config_files(args):
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # the parser reports the file itself
        for key in ("model", "data"):
            if isinstance(config, dict) and isinstance(config.get(key), dict) and isinstance(config[key].get("class_path"), str):
                selected[key] = config[key]["class_path"]
    for i, arg in enumerate(args[:-1]):
        for key in ("model", "data"):
            if (
                arg in (f"--{key}", f"--{key}.class_path")
                and not args[i + 1].startswith(("-", "{"))
                and not args[i + 1].endswith((".yaml", ".yml"))
            ):
                selected[key] = args[i + 1]
    return selected


def print_selected_class_options(args: list[str]) -> None:
    """After ``--help``: the options of the model and data classes that the config selects.

    In subclass mode LightningCLI's help lists ``--model CLASS_PATH_OR_NAME`` only; the options of the selected
    class (``model.init_args.*``) are printed here, as ``--model.help <class>`` would print them.
    """
    for key, class_path in selected_classes(args).items():
        module, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module or "lit_finetune"), name)
        except (ImportError, AttributeError, ValueError):
            continue  # the parser reports an unknown class when the config is used
        parser = LightningArgumentParser(description=f"Options of {key}: {class_path} (--{key}.<option> or {key}.init_args.<option>)")
        parser.add_class_arguments(cls, key, fail_untyped=False)
        print()
        parser.print_help()


def build_cli(args: list[str] | None = None, run: bool = True) -> FinetuneCLI:
    """Parse ``args`` (``sys.argv`` when None), build the model, data and trainer, and run the subcommand.

    A config that names ``model.class_path`` or ``data.class_path`` (``lit_finetune.SegmentationModule``,
    ``lit_finetune.SegmentationDataModule``, a subclass of your own) runs in LightningCLI's subclass mode,
    with ``FinetuneClassifier`` and ``ClassificationDataModule`` as the defaults; otherwise the options of
    those two are given directly (``model: {backbone: resnet18}``), as in every classification config.
    """
    subclass = names_class_path(sys.argv[1:] if args is None else list(args))
    return FinetuneCLI(
        LightningModule if subclass else FinetuneClassifier,
        LightningDataModule if subclass else ClassificationDataModule,
        subclass_mode_model=subclass,
        subclass_mode_data=subclass,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_class=FinetuneArgumentParser,
        args=args,
        run=run,
    )


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is one of this package's checks of the user's input, not a bug.

    That is a ``ValueError``/``FileNotFoundError`` raised by a ``raise`` statement in this package's own
    code (the innermost frame is ours), or one of its own input errors (unsafe or bad files).
    """
    from lit_finetune.callbacks.resumable_checkpoint import MonitorNotLoggedError
    from lit_finetune.data.folder import BadImageError
    from lit_finetune.models.weights import UnsafeCheckpointError

    if isinstance(err, (UnsafeCheckpointError, BadImageError, MonitorNotLoggedError)):
        return True
    if not isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def find_user_error(err: BaseException) -> BaseException | None:
    """``err`` if it is a user error (:func:`is_user_error`), else the first user error among its explicit causes.

    jsonargparse wraps an error that a class raises while it is built from the config (subclass mode:
    ``model.class_path``, ``data.class_path``) in its own ``ValueError`` ("Does not validate against any of
    the Union subtypes"), raised ``from`` the original one.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if is_user_error(current):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lit-finetune`` and ``python cli.py``.

    ``export``, ``check-data`` and ``optimize`` have parsers of their own; ``fit``, ``validate``, ``test`` and
    ``predict`` go to LightningCLI. A known input error (a missing folder, an unknown backbone, a
    weights file that does not fit) prints its message and exits with status 2; ``--debug`` or
    ``LIT_FINETUNE_DEBUG=1`` shows its traceback.
    """
    argv = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if args is None:  # LightningCLI reads the command line itself (and warns about `args` given from it)
        sys.argv = sys.argv[:1] + argv
    quiet_foreign_noise()
    try:
        run_subcommand(argv, from_sys_argv=args is None)
    except Exception as err:
        user_error = find_user_error(err)
        if debug or user_error is None:
            raise
        sys.stderr.write(f"error: {user_error}\n  (`--debug` or {DEBUG_ENV}=1 shows the traceback)\n")
        sys.exit(2)


def run_subcommand(argv: list[str], from_sys_argv: bool = False) -> None:
    """Run one command line (without the program name); LightningCLI reads ``sys.argv`` when ``from_sys_argv``."""
    if argv and argv[0] == "export":
        from lit_finetune.export import main as export_main

        sys.exit(export_main(argv[1:]))
    if argv and argv[0] == "check-data":
        from lit_finetune.data.check import main as check_main

        sys.exit(check_main(argv[1:]))
    if argv and argv[0] == "optimize":
        from lit_finetune.cli.optimize import main as optimize_main

        sys.exit(optimize_main(argv[1:], build_cli))
    if argv and argv[0] in ("-h", "--help"):
        print(
            "Other subcommands:\n"
            + "\n".join(f"  {name:<12}{text} (`lit-finetune {name} --help`)" for name, text in EXTRA_SUBCOMMANDS.items())
            + "\n"
        )
    if len(argv) > 1 and ("-h" in argv or "--help" in argv) and selected_classes(argv):
        try:
            build_cli(None if from_sys_argv else argv)
        except SystemExit:
            print_selected_class_options(argv)
            raise
    build_cli(None if from_sys_argv else argv)


if __name__ == "__main__":
    main()

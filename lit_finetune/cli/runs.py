"""Where a command's run writes: logger versions, checkpoints found by name, predict folders, the checkpoint monitor.

Helpers of :class:`~lit_finetune.cli.app.FinetuneCLI` that edit the parsed config before the objects are built.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from lit_finetune.tasks import TASKS

DEFAULT_MODEL = "lit_finetune.modules.classifier.FinetuneClassifier"
DEFAULT_MONITOR = "val/acc"

log = logging.getLogger(__name__)


def logger_init_args(config):
    """``init_args`` of the configured (first) logger, or None without a logger that has a ``save_dir``."""
    logger = config.trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    init_args = getattr(logger, "init_args", None)
    if init_args is None or init_args.get("save_dir") is None:
        return None
    return init_args


def newest_run_checkpoint(config, name: str) -> Path:
    """``<run>/checkpoints/<name>.ckpt`` of the newest run of the configured logger that has one.

    Raises:
        FileNotFoundError: no run of the configured logger has that file.
    """
    init_args = logger_init_args(config)
    root = Path(init_args.save_dir) / (init_args.get("name") or "") if init_args is not None else Path("runs")
    found = list(root.glob(f"*/checkpoints/{name}.ckpt"))
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path {name}: no run under '{root}' has checkpoints/{name}.ckpt. "
            f"Train first (`lit-finetune fit --config ...`) or give the checkpoint file, e.g. --ckpt_path {root}/version_0/checkpoints/last.ckpt."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def log_beside_checkpoint(config, subcommand: str) -> None:
    """validate/test/predict: resolve ``--ckpt_path best|last`` and write beside the checkpoint's run.

    ``runs/x/version_0/checkpoints/best.ckpt`` is validated/tested with logs in ``runs/x/version_0/<subcommand>/``,
    instead of a new ``version_N`` per call; ``predict`` is handled by :func:`predict_folder`.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is not None and ckpt_path in ("best", "last"):
        config.ckpt_path = ckpt_path = str(newest_run_checkpoint(config, ckpt_path))
    if ckpt_path is not None and "://" not in ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path '{ckpt_path}' is not a file. Give a .ckpt file, or `best` / `last` for the newest run's.")
    if subcommand == "predict":
        predict_folder(config, ckpt_path)
        return
    init_args = logger_init_args(config)
    if ckpt_path is None or "://" in ckpt_path or init_args is None or "version" not in init_args or "name" not in init_args:
        return
    init_args.save_dir, init_args.name, init_args.version = str(checkpoint_run(Path(ckpt_path))), "", subcommand


def checkpoint_run(ckpt: Path) -> Path:
    """The run folder of a checkpoint: ``runs/x/version_0`` for ``runs/x/version_0/checkpoints/best.ckpt``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def predict_folder(config, ckpt_path: str | None) -> None:
    """predict: no logger, and every output in a folder named for the checkpoint used.

    ``--ckpt_path best`` of ``runs/x/version_0`` writes into ``runs/x/version_0/predict/best/``
    (``predictions.csv``, ``masks/``, ``config.yaml``), ``last`` into ``.../predict/last/``, any other file into
    ``<its run>/predict/<file stem>/``; without a checkpoint, ``<logger save_dir>/<name>/predict/no_checkpoint/``.
    So predictions of two checkpoints never overwrite each other, and predict adds no TensorBoard run (it logs
    nothing). An ``output_path``/``output_dir`` set on a writer is kept.
    """
    if ckpt_path is not None and "://" not in ckpt_path:
        folder = checkpoint_run(Path(ckpt_path)) / "predict" / Path(ckpt_path).stem
    elif ckpt_path is not None:
        folder = Path("predict") / Path(ckpt_path.split("://", 1)[1]).stem
    else:
        init_args = logger_init_args(config)
        root = (
            Path(init_args.save_dir) / (init_args.get("name") or "")
            if init_args is not None
            else Path(config.trainer.get("default_root_dir") or ".")
        )
        folder = root / "predict" / "no_checkpoint"
    config.trainer.logger = False
    config.trainer.default_root_dir = str(folder)  # the trainer's log_dir without a logger: the writers' default folder


def resume_logger_version(config) -> None:
    """For ``--ckpt_path last``: continue the newest run of the configured logger that has a ``last*.ckpt``.

    Lightning looks for ``last.ckpt`` in the checkpoint folder of the *current* run, and every run of
    a TensorBoard/CSV logger without a fixed ``version`` gets a new folder, so ``last`` would find
    nothing. This sets the logger's ``version`` to the newest ``version_*`` folder holding a last
    checkpoint, so that the run resumes from it and keeps logging there.
    """
    if config.get("checkpoint") and config.checkpoint.get("dirpath"):
        return
    init_args = logger_init_args(config)
    if init_args is None or init_args.get("version") is not None:
        return
    root = Path(init_args.save_dir) / (init_args.get("name") or "")
    runs = [ckpt for ckpt in root.glob("*/checkpoints/last*.ckpt")]
    if runs:
        newest = max(runs, key=lambda p: p.stat().st_mtime)
        init_args.version = newest.parent.parent.name
        log.info("--ckpt_path last: resuming %s", newest.parent.parent)


def model_class_of(model) -> type | None:
    """The model class a config section names (``FinetuneClassifier`` without a ``class_path``), or None if unknown."""
    class_path = model.get("class_path") or DEFAULT_MODEL
    try:
        module, _, name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # jsonargparse reports an unknown class itself


def task_monitor(model) -> tuple[str, str | None]:
    """The checkpoint metric of the configured model and its file name pattern (None: made from the metric).

    The model class's ``checkpoint_monitor`` (``SegmentationModule``: ``val/miou``) when it names one, else the
    ``checkpoint_monitor`` of the task that ``model.task`` selects (``val/acc``, ``val/map``, ``val/auroc``),
    else ``val/acc``.
    """
    model_class = model_class_of(model) if model is not None else None
    monitor = getattr(model_class, "checkpoint_monitor", None)
    if monitor:
        return str(monitor), getattr(model_class, "checkpoint_filename", None)
    options = (model.get("init_args") or model) if model is not None else {}
    task = TASKS.get(str(options.get("task")))
    return (task.checkpoint_monitor if task is not None and task.checkpoint_monitor else DEFAULT_MONITOR), None


def monitor_model_metric(config) -> None:
    """Fill in ``checkpoint.monitor`` (when the config sets none) with the task's metric, and ``checkpoint.filename``
    (when unset) with ``epoch{epoch:02d}-<metric>{<monitor>:.4f}``; see :func:`task_monitor`."""
    checkpoint = config.get("checkpoint")
    if checkpoint is None:
        return
    filename = None
    if checkpoint.get("monitor") is None:
        checkpoint.monitor, filename = task_monitor(config.get("model"))
    if checkpoint.get("filename") is None:
        monitor = checkpoint.monitor
        checkpoint.filename = filename or "epoch{epoch:02d}-" + monitor.rsplit("/", 1)[-1] + "{" + monitor + ":.4f}"

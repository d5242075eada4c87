"""Save a checkpoint when a run is interrupted (SIGTERM, Ctrl+C, an error), next to ``last.ckpt``."""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """Write ``last-interrupted.ckpt`` beside the ``ModelCheckpoint``'s files when a run stops early.

    On SIGTERM (a cluster's preemption, ``kill``) Lightning finishes the current batch and raises
    ``SIGTERMException``; on Ctrl+C it raises ``KeyboardInterrupt``. Either way this callback writes
    ``last-interrupted.ckpt``, and the run exits. The name starts with ``last`` so that
    ``--ckpt_path last`` picks it when it is newer than ``last.ckpt``; it is deleted when a later run
    finishes normally. Epochs finished before the interruption are never lost: a resumed run continues
    with the interrupted epoch. With a map-style loader (the folder data modules) that epoch's data starts
    over; with a stateful loader (the streaming data modules' ``StreamingDataLoader``), whose position
    Lightning saves in every checkpoint, it goes on with the samples the epoch had not yet seen.

    It is a plain callback, not Lightning's ``OnExceptionCheckpoint``: Lightning treats the presence of
    that class as a request to resume every ``fit`` from ``last``, and warns about it on fresh runs.

    Args:
        dirpath: folder of the checkpoint; None: the ``ModelCheckpoint``'s folder (``<log_dir>/checkpoints``),
            or ``<default_root_dir>/checkpoints`` without one.
        filename: file name without the ``.ckpt`` extension.

    Raises:
        ValueError: ``filename`` is empty.

    Example::

        trainer = Trainer(callbacks=[ModelCheckpoint(save_last=True), InterruptCheckpoint()])
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | None = None, filename: str = "last-interrupted") -> None:
        if not filename:
            raise ValueError("InterruptCheckpoint: `filename` is empty; give a name such as 'last-interrupted'.")
        self.dirpath = dirpath
        self.filename = filename

    def checkpoint_path(self, trainer: Trainer) -> str:
        """Where the interrupted checkpoint of ``trainer`` goes."""
        folder = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = folder or os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(folder, self.filename + self.FILE_EXTENSION)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0 or trainer.fast_dev_run:  # nothing trained yet, or a smoke test: keep the error in front
            return
        path = self.checkpoint_path(trainer)
        try:
            trainer.save_checkpoint(path)
        except Exception as err:  # never hide the exception that stopped the run
            log.warning("Could not save %s after the interruption: %s", path, err)
            return
        rank_zero_info(f"Run interrupted: checkpoint saved to {path}. Resume with `--ckpt_path last` or `--ckpt_path {path}`.")

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Only a finished `fit` makes the interrupted checkpoint stale (not `validate` on it); an
        # interrupted run does not reach this hook.
        if stage == "fit":
            path = self.checkpoint_path(trainer)
            if os.path.exists(path):
                trainer.strategy.remove_checkpoint(path)

"""Save a checkpoint when a run is interrupted (SIGTERM, Ctrl+C, an error), next to ``last.ckpt``."""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

log = logging.getLogger(__name__)


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint`` whose folder defaults to the ``ModelCheckpoint``'s.

    On SIGTERM (a cluster's preemption, ``kill``) Lightning finishes the current batch and raises
    ``SIGTERMException``; on Ctrl+C it raises ``KeyboardInterrupt``. Either way this callback writes
    ``last-interrupted.ckpt``, and the run exits. The name starts with ``last`` so that
    ``--ckpt_path last`` picks it when it is newer than ``last.ckpt``; it is deleted when a later run
    finishes normally. Epochs finished before the interruption are never lost: a resumed run continues
    with the interrupted epoch (which restarts its data from the beginning).

    Args:
        dirpath: folder of the checkpoint; None: the ``ModelCheckpoint``'s folder (``<log_dir>/checkpoints``),
            or ``<default_root_dir>/checkpoints`` without one.
        filename: file name without the ``.ckpt`` extension.

    Raises:
        ValueError: ``filename`` is empty.

    Example::

        trainer = Trainer(callbacks=[ModelCheckpoint(save_last=True), InterruptCheckpoint()])
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last-interrupted") -> None:
        super().__init__(dirpath or ".", filename)
        self._dirpath_given = dirpath is not None

    def _resolve_dirpath(self, trainer: Trainer) -> None:
        if self._dirpath_given:
            return
        checkpoint = trainer.checkpoint_callback
        self.dirpath = getattr(checkpoint, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")

    @override
    def on_exception(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step == 0:  # nothing trained yet: keep the original error in front
            return
        self._resolve_dirpath(trainer)
        try:
            super().on_exception(trainer, *args, **kwargs)
        except Exception as err:  # never hide the exception that stopped the run
            log.warning("Could not save %s after the interruption: %s", self.ckpt_path, err)
            return
        rank_zero_info(f"Run interrupted: checkpoint saved to {self.ckpt_path}. Resume with `--ckpt_path last` or `--ckpt_path {self.ckpt_path}`.")

    @override
    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        # Only a finished `fit` makes the interrupted checkpoint stale (not `validate` on it).
        if stage == "fit":
            self._resolve_dirpath(trainer)
            super().teardown(trainer, pl_module, stage)

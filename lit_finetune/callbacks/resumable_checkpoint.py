"""``ModelCheckpoint`` that refreshes ``last.ckpt`` at every epoch end, improved or not, keeps ``best.ckpt``, and
says which metrics are logged when the monitored one is not."""

from __future__ import annotations

import os
import shutil
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override


class ResumableModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest finished epoch.

    Since Lightning 2.5, ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint was written at
    the same step: when the monitored metric does not improve, ``last.ckpt`` keeps an older epoch and
    ``--ckpt_path last`` silently repeats epochs (or, with ``max_epochs`` reached, trains nothing new). This
    subclass also writes ``last.ckpt`` at every epoch-end save point where the parent skipped it.

    ``best.ckpt`` in the same folder is always the best top-k checkpoint (a hard link, or a copy where
    links are not possible, put in place by an atomic rename), also after a resume, so that
    ``--ckpt_path runs/.../checkpoints/best.ckpt`` needs no file name with a metric in it. All arguments
    are those of ``ModelCheckpoint``.

    With ``fast_dev_run`` nothing is written. In ``validate``/``test``/``predict`` its state in the checkpoint is
    not restored (nothing is saved there), so Lightning's "dirpath has changed" warning is not shown.

    A ``monitor`` that the module does not log is an error that lists the logged metrics, raised at the end of
    the sanity-check validation when the monitor is a metric of that stage (``val/...``), otherwise at the
    first save, instead of Lightning's traceback after the first epoch.

    Raises:
        MonitorNotLoggedError: the monitored metric is not among the logged ones.

    Example::

        checkpoint = ResumableModelCheckpoint(monitor="val/acc", mode="max", save_last=True)
    """

    _last_saved_step: int = -1
    _best_linked_from: str = ""
    _monitor_seen: bool = False
    _stage: str = "fit"
    BEST_NAME = "best"

    def _check_monitor(self, trainer: Trainer, logged: dict[str, Tensor], final: bool) -> None:
        """Raise when ``monitor`` is not in ``logged``; before the first save (``final=False``) only if metrics of
        its stage (the part before the last ``/``) were logged, since those of another stage may come later."""
        if self.monitor is None or self._monitor_seen:
            return
        if self.monitor in logged:
            self._monitor_seen = True
            return
        stage = self.monitor.rpartition("/")[0]
        if final or (stage and any(key.startswith(stage + "/") for key in logged)):
            raise MonitorNotLoggedError(self.monitor, sorted(logged))

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._stage = stage

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # validate/test/predict from a checkpoint save nothing: the folder the training run saved into does not
        # matter, and Lightning's warning that it "has changed" (it always has: the logs go elsewhere) is noise.
        if self._stage != "fit":
            self.best_model_path = state_dict.get("best_model_path", self.best_model_path)
            return
        super().load_state_dict(state_dict)

    def _update_best_link(self, trainer: Trainer) -> None:
        source = self.best_model_path
        if not source or not self.dirpath or not trainer.is_global_zero or not os.path.isfile(source):
            return
        target = os.path.join(self.dirpath, self.BEST_NAME + self.FILE_EXTENSION)
        if os.path.abspath(source) == os.path.abspath(target):
            return
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (another file system, Windows share): copy
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        self._best_linked_from = source

    @override
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if filepath == self.best_model_path:
            self._update_best_link(trainer)

    @override
    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_step = trainer.global_step

    def _refresh_last(self, trainer: Trainer) -> None:
        if (
            self.save_last
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not trainer.fast_dev_run  # type: ignore[attr-defined]  # set by the Trainer's init
            and self._last_saved_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self.best_model_path != self._best_linked_from:  # e.g. resumed from a run without best.ckpt
            self._update_best_link(trainer)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning's hook writes `last.ckpt` at the end of any run, also with `fast_dev_run` (whose logger is a
        # dummy, so the file lands in `<working folder>/checkpoints/`); a smoke test writes no checkpoint.
        if trainer.fast_dev_run:  # type: ignore[attr-defined]  # set by the Trainer's init
            return
        super().on_train_end(trainer, pl_module)

    @override
    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.save_top_k != 0 and trainer.fit_loop.epoch_loop.val_loop._has_run:  # as Lightning decides it is an error
            self._check_monitor(trainer, monitor_candidates, final=True)
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING and self.save_top_k != 0:
            self._check_monitor(trainer, dict(trainer.callback_metrics), final=False)
        due = not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if due:
            self._refresh_last(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if due:
            self._refresh_last(trainer)


class MonitorNotLoggedError(ValueError):
    """The checkpoint's ``monitor`` is not a metric the module logs (a configuration error of the user's).

    Args:
        monitor: the monitored key.
        logged: the keys that are logged.
    """

    def __init__(self, monitor: str, logged: list[str]) -> None:
        shown = ", ".join(logged) if logged else "none"
        super().__init__(
            f"checkpoint.monitor '{monitor}' is not logged by this model; the logged metrics are: {shown}. "
            "Set `checkpoint.monitor` to one of them (and `checkpoint.mode` to min or max), or leave it unset for the task's metric."
        )
        self.monitor = monitor
        self.logged = logged

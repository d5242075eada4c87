"""How much of each training step is spent waiting for data, measured on the host without device syncs."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.callbacks._tensorboard import log_scalars


class DataTiming(Callback):
    """Log the share of training time spent waiting for the next batch, and the throughput.

    The wait is the host time between the end of one training batch and the start of the next (the
    dataloader's ``next``, the copy to the device and Lightning's own bookkeeping); the rest of the
    window is the step. No device synchronization is added: on a GPU the host runs ahead of the
    device, so over a window of ``every_n_steps`` batches the host-side wait equals the time the device
    starves for input, which is what the fraction is meant to show. Validation is excluded.

    Logged every ``every_n_steps`` training batches, averaged over that window, to every logger:
    ``zz-perf/data_wait_fraction``, ``zz-perf/samples_per_sec`` (over all ranks), ``zz-perf/data_wait_ms`` and
    ``zz-perf/step_ms`` (per batch).

    Args:
        every_n_steps: window length in training batches; None: the Trainer's ``log_every_n_steps``.

    Raises:
        ValueError: ``every_n_steps < 1``.

    Example::

        trainer = Trainer(callbacks=[DataTiming()])
        # a data_wait_fraction near 1: raise data.num_workers, pin_memory, or cache decoded images
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1 or None (the Trainer's log_every_n_steps), got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.last_logged: dict[str, float] = {}
        """The scalars written last."""
        self._reset_window()
        self._last_end: float | None = None
        self._start = 0.0

    def _reset_window(self) -> None:
        self._wait = 0.0
        self._compute = 0.0
        self._samples = 0
        self._batches = 0

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The first batch's wait includes starting the dataloader workers: that is real waiting too.
        self._last_end = time.perf_counter()

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()
        if self._last_end is not None:
            self._wait += self._start - self._last_end

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        end = time.perf_counter()
        self._compute += end - self._start
        self._last_end = end
        self._batches += 1
        self._samples += _batch_size(outputs, batch)
        if self._batches >= (self.every_n_steps or trainer.log_every_n_steps):  # type: ignore[attr-defined]  # set by the logger connector
            self._log(trainer)

    def _log(self, trainer: Trainer) -> None:
        total = self._wait + self._compute
        if total > 0:
            self.last_logged = {
                "zz-perf/data_wait_fraction": self._wait / total,
                "zz-perf/samples_per_sec": self._samples * trainer.world_size / total,
                "zz-perf/data_wait_ms": 1000 * self._wait / self._batches,
                "zz-perf/step_ms": 1000 * self._compute / self._batches,
            }
            log_scalars(trainer, self.last_logged, trainer.global_step)
        self._reset_window()


def _batch_size(outputs: Any, batch: Any) -> int:
    """Samples in the batch, read from the step outputs (the per-sample losses) or the images."""
    if isinstance(outputs, dict) and keys.SAMPLE_LOSS in outputs:
        return len(outputs[keys.SAMPLE_LOSS])
    if isinstance(batch, dict) and keys.IMAGE in batch:
        return len(batch[keys.IMAGE])
    return 0

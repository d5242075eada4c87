"""DataTiming: the wait/compute split and the throughput match the time actually spent."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from lit_finetune import keys
from lit_finetune.callbacks.data_timing import DataTiming


class MemoryLogger:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def test_fraction_and_throughput_from_known_sleeps():
    logger = MemoryLogger()
    trainer = SimpleNamespace(log_every_n_steps=2, world_size=2, global_step=0, loggers=[logger])
    cb = DataTiming()
    outputs = {keys.SAMPLE_LOSS: torch.zeros(4)}
    cb.on_train_epoch_start(trainer, None)
    for step in range(4):
        time.sleep(0.06)  # "waiting for data"
        cb.on_train_batch_start(trainer, None, None, step)
        time.sleep(0.02)  # "computing"
        trainer.global_step = step + 1
        cb.on_train_batch_end(trainer, None, outputs, None, step)
    assert [step for step, _ in logger.rows] == [2, 4]
    for _, row in logger.rows:
        assert row["zz-perf/data_wait_fraction"] == pytest.approx(0.75, abs=0.08)
        assert row["zz-perf/data_wait_ms"] == pytest.approx(60, abs=15)
        # 4 samples per batch on each of 2 ranks, one batch per 60 + 20 ms slept: 100 samples/s
        assert row["zz-perf/samples_per_sec"] == pytest.approx(8 / 0.08, rel=0.2)


class SlowImages(Dataset):
    """Tiny images whose loading takes a known time: ``__getitem__`` sleeps ``delay`` seconds."""

    def __init__(self, n: int, delay: float) -> None:
        self.images = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        self.delay = delay

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)
        return {keys.IMAGE: self.images[i], keys.TARGET: torch.tensor(i % 2)}


class RecordingLogger(Logger):
    """A Lightning logger that keeps the rows it is given."""

    name, version, save_dir = "memory", 0, None

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


class TinyModel(LightningModule):
    """A linear classifier whose step costs next to nothing next to the data's sleeps."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 2)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.fc(batch[keys.IMAGE].flatten(1)), batch[keys.TARGET])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_real_run_reports_the_time_the_dataset_spends(tmp_path) -> None:
    # 2 samples a batch, 40 ms a sample: each batch waits at least 80 ms for its data (main-process loading);
    # the step itself is a linear layer on 2 tiny images. The measurement is the sleeps, not the callback's formula.
    batch, delay, batches = 2, 0.04, 6
    timing = DataTiming(every_n_steps=3)
    logger = RecordingLogger()
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=[timing],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(TinyModel(), DataLoader(SlowImages(batch * batches, delay), batch_size=batch, num_workers=0))
    elapsed = time.perf_counter() - start
    rows = [(step, row) for step, row in logger.rows if "zz-perf/data_wait_ms" in row]
    assert [step for step, _ in rows] == [3, 6]
    per_batch = elapsed / batches  # an upper bound of a batch's time: the whole fit, timed from outside
    for _, row in rows:
        # The wait is at least the sleeps and at most a batch's share of the whole fit; the step is the rest.
        assert batch * delay * 1000 <= row["zz-perf/data_wait_ms"] < per_batch * 1000
        assert 0.5 * batch * delay / per_batch <= row["zz-perf/data_wait_fraction"] < 1  # half: see the rate below
        # At most the rate the sleeps allow; at least about the rate of the whole fit (half of it: a window of three
        # steps on a shared CPU can run slower than the fit's average, which set-up time otherwise keeps low).
        assert 0.5 * batch / per_batch <= row["zz-perf/samples_per_sec"] <= batch / (batch * delay)


def test_validation():
    with pytest.raises(ValueError, match="every_n_steps.*got 0"):
        DataTiming(every_n_steps=0)

"""DataTiming: the wait/compute split and the throughput match the time actually spent."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

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


def test_logged_in_a_real_run(full_run):
    fractions = [e.value for e in full_run.events.Scalars("zz-perf/data_wait_fraction")]
    assert len(fractions) == 3 and all(0 < f < 1 for f in fractions)  # one window per step (every_n_steps=1)
    rate = full_run.events.Scalars("zz-perf/samples_per_sec")[-1].value
    wait = full_run.events.Scalars("zz-perf/data_wait_ms")[-1].value
    step = full_run.events.Scalars("zz-perf/step_ms")[-1].value
    assert rate == pytest.approx(8 / ((wait + step) / 1000), rel=1e-4)


def test_validation():
    with pytest.raises(ValueError, match="every_n_steps.*got 0"):
        DataTiming(every_n_steps=0)

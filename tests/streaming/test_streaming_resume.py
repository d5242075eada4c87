"""Mid-epoch resume of a streaming run: SIGTERM, ``last-interrupted.ckpt``, and the rest of the epoch exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Trainer, seed_everything
from streaming_helpers import RecordSamples, TinyModel

from lit_finetune.callbacks.interrupt_checkpoint import InterruptCheckpoint
from lit_finetune.data.streaming import StreamingDataModule


def trainer(tmp_path: Path, recorder: RecordSamples) -> Trainer:
    return Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[recorder, InterruptCheckpoint(dirpath=str(tmp_path / "ckpt"))],
    )


def data(input_dir: str, workers: int) -> StreamingDataModule:
    return StreamingDataModule(input_dir, batch_size=4, num_workers=workers, image_size=32, resize_size=32, seed=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_then_resume_sees_the_rest_of_the_epoch_once(class_shards: Path, tmp_path: Path, workers: int):
    seed_everything(0)
    first = RecordSamples(stop_after=8)  # 24 samples, batches of 4: 6 steps an epoch; stop at step 2 of epoch 2
    with pytest.raises(SystemExit):
        trainer(tmp_path, first).fit(TinyModel(), datamodule=data(str(class_shards), workers))
    checkpoint = tmp_path / "ckpt" / "last-interrupted.ckpt"
    assert checkpoint.is_file()
    assert sorted(first.epoch(0)) == list(range(24))
    assert len(first.epoch(1)) == 8

    second = RecordSamples()
    trainer(tmp_path, second).fit(TinyModel(), datamodule=data(str(class_shards), workers), ckpt_path=str(checkpoint))
    interrupted_epoch = first.epoch(1) + second.epoch(1)
    assert sorted(interrupted_epoch) == list(range(24)), "the resumed epoch repeats or skips samples"
    assert set(second.epoch(1)).isdisjoint(first.epoch(1))
    assert second.seen[0][0] == 1 and all(epoch == 1 for epoch, _ in second.seen)


def test_checkpoint_of_other_shards_is_refused(class_shards: Path):
    module = data(str(class_shards), 0)
    state = module.state_dict()
    module.load_state_dict(state)  # the same stream: accepted
    with pytest.raises(ValueError, match="Resume with the same shards and seed"):
        module.load_state_dict({**state, "seed": 4})

"""``UnfreezeSchedule`` with ``SegmentationModule``: the encoder stages it holds keep parameter groups of their own."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from seg_model_helpers import ShapesDataset, loader, tiny_module

from lit_finetune.callbacks.unfreeze import UnfreezeSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


class Snapshots(Callback):
    """The weights at the end of every training epoch, and the optimizer's group names."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.group_names: list[list[str]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})
        self.group_names.append([g["name"] for g in trainer.optimizers[0].param_groups])


def test_unfreeze_schedule_trains_the_encoder_stage_by_stage() -> None:
    model = tiny_module()  # one LR for every stage: without `keep_separate` the stages would share one group
    assert [g["name"] for g in model.parameter_groups()] == ["all", "all.no_decay"]  # merged without a schedule
    snapshots = Snapshots()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[UnfreezeSchedule(milestones=[1], stages=[1]), snapshots],
    )
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, loader(ShapesDataset(4, 32), batch_size=4))

    names = snapshots.group_names[0]
    stages = len(model.stages)
    assert {f"backbone.stage{i}" for i in range(stages)} <= set(names)  # each held stage in a group of its own
    last = [f"backbone.{name}" for name in model.stages[-1]]  # parameter names of the encoder's last stage
    earlier = [f"backbone.{name}" for name in model.stages[0]]
    epoch0, epoch1 = snapshots.states
    assert last and earlier
    assert all(torch.equal(initial[k], epoch0[k]) for k in last + earlier)  # epoch 0: the decoder alone
    assert any(not torch.equal(initial[k], epoch0[k]) for k in initial if k.startswith("head.") and k.endswith("weight"))
    assert all(not torch.equal(epoch0[k], epoch1[k]) for k in last)  # epoch 1: the last encoder stage trains
    assert all(torch.equal(epoch0[k], epoch1[k]) for k in earlier)  # the first one is still held

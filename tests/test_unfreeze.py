"""Tests of the UnfreezeSchedule callback: milestones, warm-up, BN statistics, resume, and DDP."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from tiny_images import TinyImages
from torch.utils.data import DataLoader

from lit_finetune.callbacks.unfreeze import UnfreezeSchedule, held_stage_groups
from lit_finetune.modules.classifier import FinetuneClassifier
from lit_finetune.optim.param_groups import parameter_groups
from lit_finetune.optim.schedulers import WarmupCosineLR

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER4 = "backbone.layer4."
EARLIER = ("backbone.conv1", "backbone.bn1", "backbone.layer1.", "backbone.layer2.", "backbone.layer3.")


def make_model(**kwargs) -> FinetuneClassifier:
    seed_everything(0, verbose=False)
    return FinetuneClassifier(
        num_classes=2, backbone="resnet18", optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3), **kwargs
    )


def make_trainer(epochs: int, callbacks: list, **kwargs) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def data() -> tuple[DataLoader, DataLoader]:
    return DataLoader(TinyImages(8), batch_size=4), DataLoader(TinyImages(4, seed=1), batch_size=4)


class Snapshots(Callback):
    """The model's state (weights and BN statistics) at the end of every training epoch, and the optimizer's group names."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.group_names: list[list[str]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})
        self.group_names.append([g["name"] for g in trainer.optimizers[0].param_groups])


def moved(before: dict, after: dict, prefixes) -> set[str]:
    return {k for k in before if k.startswith(prefixes) and not torch.equal(before[k], after[k])}


def test_plan_counts_stages_from_the_output_end() -> None:
    assert UnfreezeSchedule(milestones=[2]).plan(5) == {4: 2, 3: 2, 2: 2, 1: 2, 0: 2}
    assert UnfreezeSchedule(milestones=[1, 3]).plan(5) == {4: 1, 3: 3, 2: 3, 1: 3, 0: 3}
    assert UnfreezeSchedule(milestones=[1, 3], stages=[2, 1]).plan(5) == {4: 1, 3: 1, 2: 3}
    with pytest.raises(ValueError, match="asks for 6 stages"):
        UnfreezeSchedule(milestones=[1], stages=[6]).plan(5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"milestones": [2, 1]}, "strictly increasing"),
        ({"milestones": [1], "stages": [1, 1]}, "stages must"),
        ({"milestones": [1], "warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnfreezeSchedule(**kwargs)


def test_milestones_unfreeze_stages_at_the_right_epochs() -> None:
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = Snapshots()
    trainer = make_trainer(3, [UnfreezeSchedule(milestones=[1, 2], train_bn=False), snapshots])
    trainer.fit(model, *data())
    epoch0, epoch1, epoch2 = snapshots.states
    # Epoch 0: the head alone; BN statistics of the frozen backbone do not move either.
    assert moved(initial, epoch0, "backbone.") == set()
    assert moved(initial, epoch0, "head.") == {"head.layers.fc.weight", "head.layers.fc.bias"}
    # Epoch 1: layer4 (stage 4) trains, weights and statistics; earlier stages are still untouched.
    assert moved(epoch0, epoch1, LAYER4) == {k for k in initial if k.startswith(LAYER4)}
    assert moved(epoch0, epoch1, EARLIER) == set()
    # Epoch 2: everything trains.
    assert moved(epoch1, epoch2, EARLIER) == {k for k in initial if k.startswith(EARLIER)}
    # The optimizer held every group from the start: nothing was added at the milestones.
    assert snapshots.group_names[0] == snapshots.group_names[2]
    assert "backbone.stage0" in snapshots.group_names[0]
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_module_parameters_are_reported() -> None:
    model = make_model(freeze="backbone")
    trainer = make_trainer(1, [UnfreezeSchedule(milestones=[1])])
    with pytest.raises(ValueError, match="freeze: none"):
        trainer.fit(model, *data())


class MergedGroups(FinetuneClassifier):
    """A module that builds its groups without keeping the held stages apart."""

    def parameter_groups(self) -> list[dict]:
        return parameter_groups(self, self.stages, backbone_lr_mult=0.5)


def test_held_stages_need_groups_of_their_own() -> None:
    schedule = UnfreezeSchedule(milestones=[1], stages=[2])
    model = MergedGroups(num_classes=2, backbone="resnet18")
    trainer = make_trainer(1, [schedule])
    with pytest.raises(ValueError, match=r"stages \[0, 1, 2, 3, 4\] share optimizer parameter groups"):
        trainer.fit(model, *data())
    assert schedule.group_names() == [f"backbone.stage{i}" for i in range(5)]  # stages 0-2 are held all run
    assert held_stage_groups(trainer) == schedule.group_names() and held_stage_groups(None) == []


class StepLRs(Callback):
    """The LR that the optimizer uses for ``group`` at each step (read inside ``optimizer.step``)."""

    def __init__(self, group: str) -> None:
        self.group, self.lrs = group, []

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        target = next(g for g in optimizer.param_groups if g["name"] == self.group)
        optimizer.register_step_pre_hook(lambda *_: self.lrs.append(target["lr"]))


def test_warmup_ramps_the_unfrozen_stage_lr() -> None:
    model = make_model(backbone_lr_mult=0.5)
    recorder = StepLRs("backbone.stage4")
    schedule = UnfreezeSchedule(milestones=[1], warmup_steps=3, warmup_start_factor=0.25)
    trainer = make_trainer(3, [schedule, recorder])  # the recorder's hook runs after the schedule's
    trainer.fit(model, *data())
    lr = 0.05 * 0.5
    # Two steps per epoch; the milestone (epoch 1) starts at step 2; the factor goes 0.25, 0.5, 0.75, then 1.
    assert recorder.lrs == pytest.approx([lr, lr, 0.25 * lr, 0.5 * lr, 0.75 * lr, lr])
    assert schedule.warmup_start == {i: 2 for i in range(5)}
    assert {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}["backbone.stage4"] == lr  # restored after each step


class StopAfter(Callback):
    """Interrupt the run at the end of an epoch, as a crash or a time limit would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _fit_unfreeze(callbacks: list, ckpt_path: str | None = None, save_to: Path | None = None) -> FinetuneClassifier:
    model = make_model(
        backbone_lr_mult=0.1, layer_decay=0.8, lr_scheduler=partial(WarmupCosineLR, warmup_steps=2), scheduler_interval="step"
    )
    trainer = make_trainer(4, [UnfreezeSchedule(milestones=[1, 2], warmup_steps=3), *callbacks])
    trainer.fit(model, *data(), ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return model


def test_resume_after_a_milestone_equals_an_uninterrupted_fit(tmp_path: Path) -> None:
    # 4 epochs; milestones at epochs 1 and 2; the interrupted run stops after epoch 1, inside layer4's warm-up.
    reference = _fit_unfreeze([])
    checkpoint = tmp_path / "interrupted.ckpt"
    interrupted = _fit_unfreeze([StopAfter(epoch=1)], save_to=checkpoint)
    assert interrupted.current_epoch == 2
    saved = torch.load(checkpoint, weights_only=False)
    assert [g["name"] for g in saved["optimizer_states"][0]["param_groups"]] == [g["name"] for g in reference.parameter_groups()]
    resumed = _fit_unfreeze([], ckpt_path=str(checkpoint))
    reference_state, resumed_state = reference.state_dict(), resumed.state_dict()
    assert resumed_state.keys() == reference_state.keys()
    assert [k for k in reference_state if not torch.equal(reference_state[k], resumed_state[k])] == []
    assert not torch.equal(reference_state["backbone.conv1.weight"], interrupted.state_dict()["backbone.conv1.weight"])


DDP_SCRIPT = """
import sys
from functools import partial
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset
from lit_finetune import keys
from lit_finetune.callbacks.unfreeze import UnfreezeSchedule, held_stage_groups
from lit_finetune.modules.classifier import FinetuneClassifier
from lit_finetune.optim.param_groups import parameter_groups
from lit_finetune.optim.schedulers import WarmupCosineLR

torch.set_num_threads(1)

class Images(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 3, 32, 32, generator=g) + self.y.view(-1, 1, 1, 1).float()
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return {keys.IMAGE: self.x[i], keys.TARGET: self.y[i], keys.INDEX: i, keys.PATH: str(i)}

out = sys.argv[1]
seed_everything(0)
model = FinetuneClassifier(
    num_classes=2, backbone="shufflenet_v2_x0_5", optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    lr_scheduler=partial(WarmupCosineLR, warmup_steps=2), scheduler_interval="step", backbone_lr_mult=0.5,
)
initial = {k: v.clone() for k, v in model.state_dict().items()}
trainer = Trainer(
    max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    callbacks=[UnfreezeSchedule(milestones=[1], stages=[1], warmup_steps=1, train_bn=False)],
)
trainer.fit(model, DataLoader(Images(16), batch_size=4))
params = [name for name, _ in model.named_parameters()]
torch.save({"initial": initial, "final": model.state_dict(), "params": params}, f"{out}/rank{trainer.global_rank}.pt")
"""


def test_two_process_ddp_ranks_end_identical(tmp_path: Path) -> None:
    script = tmp_path / "ddp_unfreeze.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # Parameters are identical; BN running statistics of trained layers are per rank (DDP broadcasts rank 0's
    # at the start of each forward), so only those may differ.
    different = [k for k in rank0["final"] if not torch.equal(rank0["final"][k], rank1["final"][k])]
    assert [k for k in different if k in rank0["params"]] == []
    assert all(k.startswith("backbone.conv5.1.running_") for k in different)
    stage_last = "backbone.conv5."  # shufflenet's last stage: unfrozen at epoch 1, trained with synchronized gradients
    trained = [k for k in rank0["final"] if k.startswith(stage_last) and not torch.equal(rank0["final"][k], rank0["initial"][k])]
    assert trained, "the unfrozen stage did not train"
    frozen = [k for k in rank0["final"] if k.startswith("backbone.stage") and not torch.equal(rank0["final"][k], rank0["initial"][k])]
    assert frozen == []  # stages 2-4 of shufflenet are never unfrozen: weights and BN statistics unchanged

r"""
Unfreeze schedule
^^^^^^^^^^^^^^^^^

Train the head on a frozen backbone first, then unfreeze the backbone stage by stage, from the
output end, at epoch milestones (fastai's ``fine_tune(freeze_epochs)``, Lightning Flash's
``unfreeze_milestones``).

Every stage's parameter group is in the optimizer from the start, with the LR the module gave it
(head LR, backbone multiplier, layer decay): a stage is held still until its milestone by keeping
its gradients away from the optimizer, not by adding a group later. So

- any scheduler (``OneCycleLR``, ``ReduceLROnPlateau``, ``LambdaLR``, ...) sees every group from
  the first step, and per-group LR scales hold with those that scale each group's initial LR
  (``OneCycleLR`` needs one ``max_lr`` per group for that);
- the optimizer never changes shape: a checkpoint saved after a milestone resumes with all groups,
  their state and the scheduler's state, and continues as if never interrupted;
- under DDP (world size > 1) no ``requires_grad`` flag changes after the model is wrapped (the
  cause of Lightning issue #20340): frozen stages compute gradients that are dropped before the
  optimizer step. On one process they get ``requires_grad=False`` instead, which saves the backward
  pass through them.

A stage's LR may ramp up linearly over ``warmup_steps`` optimizer steps after its milestone. The
ramp multiplies the group's LR only while the optimizer steps (it is restored right after), so it
composes with whatever scheduler runs; ``LearningRateMonitor`` shows the scheduled LR.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lit_finetune.models.stages import backbone_stages
from lit_finetune.optim.freezing import hold_eval, release_eval
from lit_finetune.optim.param_groups import held_groups

log = logging.getLogger(__name__)


def held_stage_groups(trainer: pl.Trainer | None) -> list[str]:
    """Parts that the :class:`UnfreezeSchedule` callbacks of ``trainer`` hold, to pass as
    ``keep_separate`` to :func:`lit_finetune.optim.param_groups.parameter_groups` ([] without a trainer).

    Example::

        groups = parameter_groups(module, stages, keep_separate=held_stage_groups(module._trainer))
    """
    return held_groups(trainer)


class UnfreezeSchedule(BaseFinetuning):
    """Unfreeze backbone stages at epoch milestones, from the output end towards the input.

    Stages are those of :func:`lit_finetune.models.stages.backbone_stages` (``backbone.stage{i}`` in
    the module's parameter groups). Use it with ``freeze: none`` on the module: the callback freezes
    the stages it schedules and needs them in the optimizer, each stage in groups of its own
    (pass :meth:`group_names` as ``keep_separate`` to :func:`lit_finetune.optim.param_groups.parameter_groups`).

    Args:
        milestones: Epochs (0-based, increasing) at which stages are unfrozen. Before the first one
            every scheduled stage is frozen and the head trains alone.
        stages: How many stages to unfreeze at each milestone, counted from the output end.
            None: one stage at each milestone except the last, which unfreezes all the remaining
            stages (so ``milestones=[2]`` is fastai's ``fine_tune(freeze_epochs=2)``). With a list,
            stages beyond its sum stay frozen for the whole run.
        warmup_steps: Optimizer steps over which a newly unfrozen stage's LR ramps up linearly.
        warmup_start_factor: Fraction of its LR that a stage starts its warm-up with.
        train_bn: ``True``: BatchNorm layers of frozen stages keep training (parameters and running
            statistics). ``False``: they run in eval mode until their milestone, so their statistics
            do not move.

    Raises:
        ValueError: If the milestones are not increasing non-negative epochs, ``stages`` does not
            match them, or a warm-up argument is out of range.

    Example::

        from lit_finetune.callbacks.unfreeze import UnfreezeSchedule
        # epochs 0-1: head only; epoch 2: last stage (layer4); epoch 4: all other stages
        trainer = Trainer(callbacks=[UnfreezeSchedule(milestones=[2, 4], warmup_steps=100)])

    In YAML::

        trainer:
          callbacks:
            - class_path: lit_finetune.callbacks.unfreeze.UnfreezeSchedule
              init_args: {milestones: [2, 4], warmup_steps: 100}
    """

    def __init__(
        self,
        milestones: list[int],
        stages: list[int] | None = None,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        train_bn: bool = False,
    ) -> None:
        super().__init__()
        milestones = list(milestones)
        if not milestones or any(m < 0 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing epochs >= 0, got {milestones}.")
        if stages is not None and (len(stages) != len(milestones) or any(count < 1 for count in stages)):
            raise ValueError(f"stages must give a positive number of stages for each of the {len(milestones)} milestones, got {stages}.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}.")
        self.milestones = milestones
        self.stages = None if stages is None else list(stages)
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.train_bn = train_bn
        self.unfreeze_epoch: dict[int, int] = {}  # stage index -> milestone epoch
        self.warmup_start: dict[int, int] = {}  # stage index -> global step of its first update
        self._stage_params: dict[int, list[nn.Parameter]] = {}  # frozen until the milestone
        self._stage_members: dict[int, set[int]] = {}  # ids of all the stage's parameters (BN ones included)
        self._stage_batchnorms: dict[int, list[nn.Module]] = {}
        self._frozen: set[int] = set()
        self._drop_grads = False
        self._trainer: pl.Trainer | None = None
        self._handles: list[RemovableHandle] = []
        self._saved_lrs: list[tuple[dict[str, Any], float]] = []

    # ------------------------------------------------------------------------------ planning
    def plan(self, num_stages: int) -> dict[int, int]:
        """Epoch at which each scheduled stage is unfrozen, for a backbone of ``num_stages`` stages.

        Raises:
            ValueError: If ``stages`` asks for more stages than the backbone has.

        Example::

            >>> UnfreezeSchedule(milestones=[1, 3]).plan(4)
            {3: 1, 2: 3, 1: 3, 0: 3}
        """
        counts = self.stages
        if counts is None:
            counts = [1] * (len(self.milestones) - 1) + [max(num_stages - len(self.milestones) + 1, 1)]
        if sum(counts) > num_stages:
            raise ValueError(f"UnfreezeSchedule(stages={counts}) asks for {sum(counts)} stages; the backbone has {num_stages}.")
        schedule: dict[int, int] = {}
        stage = num_stages - 1
        for epoch, count in zip(self.milestones, counts, strict=False):
            for _ in range(count):
                schedule[stage] = epoch
                stage -= 1
        return schedule

    def group_names(self) -> list[str]:
        """Parts of the module's parameter groups that must not be merged with others: every backbone
        stage this callback holds (known once it is set up; empty before)."""
        return [f"backbone.stage{index}" for index in sorted(self._stage_params)]

    # ------------------------------------------------------------------------------ freezing
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        # Under DDP, requires_grad must not change once the model is wrapped (Lightning #20340).
        self._drop_grads = trainer.world_size > 1
        super().setup(trainer, pl_module, stage)

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError("UnfreezeSchedule needs a LightningModule with an nn.Module `backbone` attribute.")
        stages = backbone_stages(backbone)
        self.unfreeze_epoch = self.plan(len(stages))
        modules = dict(backbone.named_modules())
        for index in range(len(stages)):
            names = set(stages[index])
            norms: list[nn.Module] = [m for name, m in modules.items() if isinstance(m, _BatchNorm) and f"{name}.weight" in names]
            kept = {id(p) for m in norms for p in m.parameters()} if self.train_bn else set()
            self._stage_params[index] = [p for n, p in backbone.named_parameters() if n in names and id(p) not in kept]
            self._stage_members[index] = {id(p) for n, p in backbone.named_parameters() if n in names}
            self._stage_batchnorms[index] = norms
        self._frozen = set()
        for index in range(len(stages)):  # stages left out of the plan stay frozen for the whole run
            self._freeze_stage(index)

    def _freeze_stage(self, index: int) -> None:
        if not self._drop_grads:
            for param in self._stage_params[index]:
                param.requires_grad_(False)
        if not self.train_bn:
            hold_eval(self._stage_batchnorms[index])
        self._frozen.add(index)

    def _unfreeze_stage(self, index: int, pl_module: pl.LightningModule) -> None:
        for param in self._stage_params[index]:
            param.requires_grad_(True)
        release_eval(self._stage_batchnorms[index])
        self._frozen.discard(index)
        log.info("UnfreezeSchedule: backbone stage %d trains from epoch %d.", index, pl_module.current_epoch)

    # ------------------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # No parameter groups to restore (the optimizer never changes shape), so BaseFinetuning's is skipped.
        optimizer = trainer.optimizers[0]
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [i for i in self.unfreeze_epoch if any(id(p) not in in_optimizer for p in self._stage_params[i])]
        if missing:
            raise ValueError(
                f"Backbone stages {sorted(missing)} are scheduled by UnfreezeSchedule but not in the optimizer. "
                "Set `freeze: none` on the model (the callback freezes what it schedules) and keep frozen "
                "parameters in `parameter_groups()`."
            )
        shared = [i for i, members in self._stage_members.items() if not self._has_own_groups(optimizer, members)]
        if shared:
            raise ValueError(
                f"Backbone stages {shared} share optimizer parameter groups with other parameters, so "
                "UnfreezeSchedule cannot warm them up on their own. Build the groups with "
                "`parameter_groups(..., keep_separate=schedule.group_names())`."
            )
        self._handles = [
            optimizer.register_step_pre_hook(self._scale_warmup_lrs),
            optimizer.register_step_post_hook(self._restore_lrs),
        ]

    @staticmethod
    def _has_own_groups(optimizer: Optimizer, members: set[int]) -> bool:
        groups = [g for g in optimizer.param_groups if any(id(p) in members for p in g["params"])]
        return all(id(p) in members for g in groups for p in g["params"])

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finetune_function(pl_module, trainer.current_epoch, trainer.optimizers[0])
        trainable = sum(1 for index in self.unfreeze_epoch if index not in self._frozen)
        pl_module.log("zz-unfreeze/trainable_stages", float(trainable), on_step=False, on_epoch=True, sync_dist=True)

    @override
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # Idempotent in the epoch: a run resumed at any epoch ends in the same state.
        for index, milestone in sorted(self.unfreeze_epoch.items()):
            if epoch >= milestone and index in self._frozen:
                self._unfreeze_stage(index, pl_module)
                self.warmup_start.setdefault(index, pl_module.global_step)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        if self._drop_grads:
            for index in self._frozen:
                for param in self._stage_params[index]:
                    param.grad = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------------------ warm-up
    def warmup_factor(self, index: int, step: int) -> float:
        """LR multiplier of stage ``index`` at global optimizer step ``step`` (1 outside its warm-up)."""
        start = self.warmup_start.get(index)
        if start is None or self.warmup_steps == 0 or step - start >= self.warmup_steps:
            return 1.0
        return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * (step - start) / self.warmup_steps

    def _scale_warmup_lrs(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        step = self._trainer.global_step if self._trainer is not None else 0
        for index, members in self._stage_members.items():
            factor = self.warmup_factor(index, step)
            if factor == 1.0 or index in self._frozen:
                continue
            for group in optimizer.param_groups:
                if group["params"] and all(id(p) in members for p in group["params"]):
                    self._saved_lrs.append((group, group["lr"]))
                    group["lr"] = group["lr"] * factor

    def _restore_lrs(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in self._saved_lrs:
            group["lr"] = lr
        self._saved_lrs = []

    # ------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"warmup_start": dict(self.warmup_start)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warmup_start = {int(k): int(v) for k, v in state_dict.get("warmup_start", {}).items()}

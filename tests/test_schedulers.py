"""Tests of lit_finetune.optim.schedulers: values at chosen steps, per-group scales, late groups, resume."""

import math

import pytest
import torch

from lit_finetune.optim.schedulers import StepDecayLR, WarmupCosineLR


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=1.0, momentum=0.9)


def _lrs_after(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
    return [group["lr"] for group in scheduler.optimizer.param_groups]


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1.0), (29, 1.0), (30, 0.1), (59, 0.1), (60, 0.01), (95, 0.001)])
def test_step_decay_matches_the_seed_rule(epoch: int, factor: float) -> None:
    # The seed's adjust_learning_rate: lr = base_lr * 0.1 ** (epoch // 30), for each group's own base lr.
    scheduler = StepDecayLR(_optimizer(0.1, 0.025), step_epochs=30)
    assert _lrs_after(scheduler, epoch) == pytest.approx([0.1 * factor, 0.025 * factor], rel=1e-12)


def test_warmup_cosine_values_per_group() -> None:
    total, warmup, start, floor = 20, 4, 0.1, 0.05
    scheduler = WarmupCosineLR(_optimizer(1.0, 0.3), total_steps=total, warmup_steps=warmup, warmup_start_factor=start, min_lr_ratio=floor)
    expected_factor = {
        0: 0.1,
        2: 0.1 + 0.9 * 2 / 4,
        4: 1.0,
        12: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 8 / 16)),  # half way: the mean of 1 and floor
        16: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 12 / 16)),
        20: floor,
        25: floor,  # stays at the floor past total_steps
    }
    done = 0
    for step, factor in expected_factor.items():
        lrs = _lrs_after(scheduler, step - done)
        done = step
        assert lrs == pytest.approx([1.0 * factor, 0.3 * factor], rel=1e-12), step
    assert expected_factor[12] == pytest.approx((1 + floor) / 2)


def test_group_added_later_is_scheduled_from_its_own_lr() -> None:
    optimizer = _optimizer(1.0)
    scheduler = WarmupCosineLR(optimizer, total_steps=10, warmup_steps=0)
    _lrs_after(scheduler, 5)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2})
    lrs = _lrs_after(scheduler, 1)
    factor = 0.5 * (1 + math.cos(math.pi * 6 / 10))
    assert lrs == pytest.approx([1.0 * factor, 0.2 * factor])
    assert optimizer.param_groups[1]["initial_lr"] == 0.2
    assert scheduler.base_lrs == [1.0, 0.2]


@pytest.mark.parametrize(
    "build",
    [
        lambda opt: StepDecayLR(opt, step_epochs=3, gamma=0.5),
        lambda opt: WarmupCosineLR(opt, total_steps=12, warmup_steps=3, warmup_start_factor=0.2),
    ],
)
def test_state_dict_resume_equals_uninterrupted(build) -> None:
    reference = build(_optimizer(0.5, 0.05))
    expected = [_lrs_after(reference, 1) for _ in range(10)]

    first = build(_optimizer(0.5, 0.05))
    _lrs_after(first, 4)
    optimizer_state, scheduler_state = first.optimizer.state_dict(), first.state_dict()

    # A fresh run restores the optimizer first, then the scheduler, as Lightning does.
    resumed_optimizer = _optimizer(0.5, 0.05)
    resumed = build(resumed_optimizer)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(scheduler_state)
    assert resumed.last_epoch == 4
    got = [_lrs_after(resumed, 1) for _ in range(6)]
    assert got == expected[4:]


def test_total_steps_can_be_set_after_construction() -> None:
    scheduler = WarmupCosineLR(_optimizer(1.0), warmup_steps=2)
    assert _lrs_after(scheduler, 2) == [1.0]
    scheduler.total_steps = 6
    assert _lrs_after(scheduler, 2) == pytest.approx([0.5])


def test_missing_total_steps_is_reported() -> None:
    scheduler = WarmupCosineLR(_optimizer(1.0))
    with pytest.raises(RuntimeError, match="total_steps is not set"):
        _lrs_after(scheduler, 1)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda opt: StepDecayLR(opt, step_epochs=0), "step_epochs"),
        (lambda opt: StepDecayLR(opt, gamma=1.5), "gamma"),
        (lambda opt: WarmupCosineLR(opt, total_steps=5, warmup_steps=5), "larger than warmup_steps"),
        (lambda opt: WarmupCosineLR(opt, total_steps=5, min_lr_ratio=2.0), "min_lr_ratio"),
        (lambda opt: WarmupCosineLR(opt, total_steps=5, warmup_steps=-1), "warmup_steps"),
    ],
)
def test_invalid_arguments(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(_optimizer(1.0))

"""The balanced sampler's draws: seeded from the run's seed and the epoch, and continued after a resume."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from recipes_module_helpers import tiny_data, tiny_model, tiny_trainer

from lit_finetune.data.sampling import BalancedSampler, balanced_weights

TARGETS = [0] * 3 + [1] * 17
WEIGHTS = balanced_weights(TARGETS, "multiclass")


def test_seeded_from_the_run_seed_not_the_torch_generator(monkeypatch) -> None:
    seed_everything(5, verbose=False)
    torch.manual_seed(123)  # e.g. a process that reseeded torch: the draws must not follow it
    first = BalancedSampler(WEIGHTS)
    torch.manual_seed(456)
    second = BalancedSampler(WEIGHTS)
    assert first.seed == second.seed == 5
    assert list(first) == list(second) == list(BalancedSampler(WEIGHTS, seed=5))
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert BalancedSampler(WEIGHTS).seed == 0  # no run seed: a fixed one, so that DDP processes still agree


def test_same_seed_and_epoch_agree_other_epochs_differ() -> None:
    a, b = BalancedSampler(WEIGHTS, seed=3), BalancedSampler(WEIGHTS, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    epoch4 = list(a)
    assert epoch4 == list(b)
    b.set_epoch(5)
    assert list(b) != epoch4
    assert list(BalancedSampler(WEIGHTS, seed=4)) != list(BalancedSampler(WEIGHTS, seed=3))


def test_a_resumed_sampler_continues_with_the_next_epoch() -> None:
    running = BalancedSampler(WEIGHTS, seed=3)
    drawn = [list(running) for _ in range(2)]  # two epochs without set_epoch, as under DDP's wrapper
    state = running.state_dict()
    resumed = BalancedSampler(WEIGHTS, seed=99)
    resumed.load_state_dict(state)
    assert list(resumed) == list(running)  # the third epoch, with the original seed
    assert list(BalancedSampler(WEIGHTS, seed=3)) == drawn[0]  # a fresh sampler would repeat the first epoch


def test_the_data_module_keeps_the_sampler_state_in_checkpoints(image_folder: Path, tmp_path: Path, one_thread) -> None:
    seed_everything(11, verbose=False)
    data = tiny_data(image_folder, sampler="balanced")
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(tiny_model(), datamodule=data)
    ckpt = tmp_path / "two_epochs.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)[type(data).__qualname__]
    assert saved == {"train_sampler": {"seed": 11, "epoch": 2}}

    seed_everything(12, verbose=False)  # another seed in the resumed process: the checkpoint's wins
    resumed = tiny_data(image_folder, sampler="balanced")
    resumed.load_state_dict(saved)
    resumed.setup("fit")
    sampler = resumed.train_dataloader().sampler
    reference = BalancedSampler(balanced_weights(resumed.train_set.targets, "multiclass"), seed=11)
    reference.set_epoch(2)
    assert list(sampler) == list(reference)

"""Data recipes: balanced sampling (also as Lightning wraps it under DDP), worker options, train_fraction."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, RandomSampler

from lit_finetune.data import ImageFolderDataModule
from lit_finetune.data.datamodule import MAX_AUTO_WORKERS, auto_num_workers
from lit_finetune.data.sampling import BalancedSampler, balanced_weights, expected_draws

ONE_TO_NINE = [0] * 10 + [1] * 90


@pytest.fixture
def imbalanced_folder(tmp_path: Path, make_image_folder) -> Path:
    """``train/`` with 2 ``rare`` and 18 ``common`` images (1:9), ``val/`` with 2 of each; 32 px."""
    root = tmp_path / "imbalanced"
    make_image_folder(root / "train", classes=("rare",), per_class=2)
    make_image_folder(root / "train", classes=("common",), per_class=18, seed=1)
    make_image_folder(root / "val", classes=("rare", "common"), per_class=2, seed=2)
    return root


def class_share(indices: list[int], targets: list[int], cls: int) -> float:
    return sum(targets[i] == cls for i in indices) / len(indices)


# ------------------------------------------------------------------ balanced sampler
def test_balanced_sampler_draws_the_classes_of_a_1_to_9_set_about_equally() -> None:
    sampler = BalancedSampler(balanced_weights(ONE_TO_NINE, "multiclass"), seed=0)
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        epoch_draws = list(sampler)
        assert len(epoch_draws) == len(ONE_TO_NINE)  # as many samples per epoch as the set holds
        draws += epoch_draws
    assert abs(class_share(draws, ONE_TO_NINE, 0) - 0.5) < 0.04  # shuffling would give 0.1
    sampler.set_epoch(3)
    assert list(sampler) == draws[300:400]  # an epoch's draws depend on the seed and the epoch only
    assert list(sampler) != list(sampler)  # without set_epoch, each pass draws anew


def test_balanced_weights_for_binary_and_multilabel() -> None:
    binary = [(0.0,)] * 3 + [(1.0,)]
    torch.testing.assert_close(balanced_weights(binary, "binary"), torch.tensor([1 / 3] * 3 + [1.0], dtype=torch.float64))
    # Multilabel: the rarest label of each image (label 2: one image), images without labels as a group of their own.
    multilabel = [(1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]
    weights = balanced_weights(multilabel, "multilabel")
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 1 / 2, 1.0, 1.0], dtype=torch.float64))
    draws = expected_draws(multilabel, "multilabel", weights, 3)
    torch.testing.assert_close(torch.tensor(draws), torch.tensor([1 / 3 + 1 / 2 + 1, 1 / 2 + 1, 1.0]) / (17 / 6) * 4)


def test_under_ddp_lightning_wraps_the_sampler_and_keeps_the_epoch_size() -> None:
    dataset = list(range(len(ONE_TO_NINE)))
    weights = balanced_weights(ONE_TO_NINE, "multiclass")
    loader = DataLoader(dataset, batch_size=4, sampler=BalancedSampler(weights, seed=7))
    # The function Lightning uses to give a custom sampler to each DDP process.
    wrapped = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, mode=RunningStage.TRAINING, num_replicas=2, rank=0)
    assert isinstance(wrapped, DistributedSamplerWrapper)
    single = BalancedSampler(weights, seed=7)
    for epoch in (0, 1):
        ranks = []
        for rank in (0, 1):  # each process builds its own sampler; Lightning calls set_epoch on the wrapper
            wrapper = DistributedSamplerWrapper(BalancedSampler(weights, seed=7), num_replicas=2, rank=rank, shuffle=True)
            wrapper.set_epoch(epoch)
            ranks.append(list(wrapper))
        assert [len(r) for r in ranks] == [50, 50]  # together, one epoch of the data set's size
        single.set_epoch(epoch)
        assert Counter(ranks[0] + ranks[1]) == Counter(single)  # the two shares are one balanced draw, split
    assert abs(class_share(ranks[0] + ranks[1], ONE_TO_NINE, 0) - 0.5) < 0.2


def test_data_module_balanced_sampler_and_its_report(imbalanced_folder: Path, caplog) -> None:
    dm = ImageFolderDataModule(str(imbalanced_folder), batch_size=4, num_workers=0, image_size=32, sampler="balanced")
    err = caplog.text  # rank_zero_info goes to Lightning's logger (printed on stderr)
    assert "per class: common=18, rare=2" in err
    assert "common: 18 images, ~10.0 drawn per epoch" in err and "rare: 2 images, ~10.0 drawn per epoch" in err
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler) and len(loader.sampler) == 20
    targets = [t for _, t in dm.train_set.samples]
    draws = []
    for epoch in range(30):
        loader.sampler.set_epoch(epoch)
        draws += list(loader.sampler)
    assert abs(class_share(draws, targets, dm.class_names.index("rare")) - 0.5) < 0.06
    default = ImageFolderDataModule(str(imbalanced_folder), batch_size=4, num_workers=0, image_size=32)
    default.setup("fit")
    assert isinstance(default.train_dataloader().sampler, RandomSampler)


@pytest.mark.parametrize(
    "task, option, expected", [("multiclass", "class_weights", [20 / (2 * 18), 20 / (2 * 2)]), ("binary", "pos_weight", [18 / 2])]
)
def test_auto_loss_weights_from_the_data_through_the_command_line(
    imbalanced_folder: Path, tmp_path: Path, caplog, task: str, option: str, expected: list[float]
) -> None:
    from lit_finetune.cli import build_cli

    args = ["--data.root", str(imbalanced_folder), "--data.image_size", "32", "--data.num_workers", "0", "--model.weights", "null"]
    cli = build_cli(args + ["--model.task", task, f"--model.{option}", "auto", "--trainer.logger", "false"], run=False)
    weight = cli.model.loss.weight if task == "multiclass" else cli.model.loss.pos_weight
    torch.testing.assert_close(weight, torch.tensor(expected))
    # Classes sort as [common, rare]: binary counts are [negatives, positives] with 'rare' positive, the same numbers.
    assert "Loss weights from the training label counts [18, 2]" in caplog.text


# ------------------------------------------------------------------ workers
def test_num_workers_auto_is_the_available_cpus_capped() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert auto_num_workers() == min(MAX_AUTO_WORKERS, cpus) and isinstance(auto_num_workers(), int)
    assert auto_num_workers(processes=2) == max(1, min(MAX_AUTO_WORKERS, cpus // 2))
    assert auto_num_workers(processes=10_000) == 1  # more processes than CPUs: still one worker each


def test_num_workers_auto_and_persistent_workers_in_the_loaders(image_folder: Path) -> None:
    dm = ImageFolderDataModule(str(image_folder), num_workers="auto", image_size=32)
    assert isinstance(dm.num_workers, int) and 1 <= dm.num_workers <= MAX_AUTO_WORKERS
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == dm.num_workers
    assert dm.train_dataloader().persistent_workers and dm.val_dataloader().persistent_workers  # the default
    dm = ImageFolderDataModule(str(image_folder), num_workers=1, persistent_workers=False, image_size=32)
    dm.setup("fit")
    assert not dm.train_dataloader().persistent_workers
    dm = ImageFolderDataModule(str(image_folder), num_workers=0, image_size=32)
    dm.setup("fit")
    assert not dm.train_dataloader().persistent_workers  # no workers to keep
    dm = ImageFolderDataModule(str(image_folder), num_workers="auto", image_size=32)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=4, num_nodes=2)  # two training processes on this machine share its CPUs
    assert dm.train_dataloader().num_workers == auto_num_workers(processes=2)
    with pytest.raises(ValueError, match="int >= 0 or 'auto'"):
        ImageFolderDataModule(str(image_folder), num_workers="many")  # type: ignore[arg-type]


# ------------------------------------------------------------------ train_fraction
def test_train_fraction_keeps_the_classes_stratified(tmp_path: Path, make_image_folder, caplog) -> None:
    make_image_folder(tmp_path / "train", classes=("a", "b"), per_class=10)
    make_image_folder(tmp_path / "train", classes=("c",), per_class=20)
    make_image_folder(tmp_path / "val", classes=("a", "b", "c"), per_class=2, seed=1)
    full = ImageFolderDataModule(str(tmp_path), num_workers=0)
    dm = ImageFolderDataModule(str(tmp_path), num_workers=0, train_fraction=0.3)
    assert dm.class_counts == [3, 3, 6] and dm.num_train_samples == 12
    assert set(dm.train_samples) <= set(full.train_samples) and dm.val_samples == full.val_samples
    assert "12 training images (0.3 of them, `train_fraction`)" in caplog.text
    assert ImageFolderDataModule(str(tmp_path), num_workers=0, train_fraction=0.3).train_samples == dm.train_samples
    other = ImageFolderDataModule(str(tmp_path), num_workers=0, train_fraction=0.3, split_seed=5)
    assert other.train_samples != dm.train_samples and other.class_counts == [3, 3, 6]
    assert ImageFolderDataModule(str(tmp_path), num_workers=0, train_fraction=0.01).class_counts == [1, 1, 1]  # every class kept
    with pytest.raises(ValueError, match="train_fraction"):
        ImageFolderDataModule(str(tmp_path), num_workers=0, train_fraction=0.0)

"""Data recipes: augmentation presets, random erasing, MixUp/CutMix targets, and what a mixed batch may update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from lit_finetune import FinetuneClassifier, keys
from lit_finetune.data import ImageFolderDataModule
from lit_finetune.data.mixing import BatchMixer, MixingCollate
from lit_finetune.data.transforms import AUGMENT_PRESETS, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, train_transform
from lit_finetune.tasks import build_task

PRE32 = Preprocessing(36, 32, IMAGENET_MEAN, IMAGENET_STD)


def constant_images(n: int, size: int = 8) -> torch.Tensor:
    """Image ``i`` is filled with the value ``i + 1``: a mixed image tells its mixing weight."""
    return (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def mixup_lambda(images: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """``lam`` of each sample from ``mixed = lam * x + (1 - lam) * x.roll(1)`` (constant images)."""
    x, rolled, m = images[:, 0, 0, 0], images.roll(1, 0)[:, 0, 0, 0], mixed[:, 0, 0, 0]
    return (m - rolled) / (x - rolled)


# ------------------------------------------------------------------ MixUp / CutMix targets
@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_multiclass_mixing_gives_soft_targets_that_sum_to_one(mixup_alpha: float, cutmix_alpha: float) -> None:
    torch.manual_seed(0)
    mixer = BatchMixer(mixup_alpha, cutmix_alpha, num_classes=5)
    labels = torch.tensor([0, 1, 2, 3, 4, 1])  # no sample shares its partner's class
    images = constant_images(6)
    for _ in range(5):
        paths = [f"{i}.png" for i in range(6)]
        batch = mixer({keys.IMAGE: images.clone(), keys.TARGET: labels, keys.INDEX: torch.arange(6), keys.PATH: paths})
        target = batch[keys.TARGET]
        assert target.shape == (6, 5) and target.is_floating_point()
        torch.testing.assert_close(target.sum(1), torch.ones(6))
        # One weight for the sample's own class, the rest for its partner's (the batch rolled by one).
        lam = target[torch.arange(6), labels]
        expected = lam[:, None] * torch.eye(5)[labels] + (1 - lam[:, None]) * torch.eye(5)[labels.roll(1)]
        torch.testing.assert_close(target, expected)
        # The image is mixed by that same weight: the share of its pixels (CutMix) or its blend (MixUp).
        own = (batch[keys.IMAGE] == images).float().mean(dim=(1, 2, 3))
        blend = mixup_lambda(images, batch[keys.IMAGE])
        matches = torch.isclose(own, lam, atol=1e-6) | torch.isclose(blend, lam, atol=1e-5)
        assert bool(matches.all())
        assert batch[keys.MIXED] is True and batch[keys.PATH] == paths
        assert torch.equal(batch[keys.INDEX], torch.arange(6))


def test_multilabel_mixing_is_the_lambda_mix_of_the_multi_hot_targets() -> None:
    torch.manual_seed(1)
    mixer = BatchMixer(mixup_alpha=0.4, num_classes=3, task="multilabel")
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    images = constant_images(4)
    batch = mixer({keys.IMAGE: images.clone(), keys.TARGET: multi_hot.clone(), keys.INDEX: torch.arange(4)})
    lam = mixup_lambda(images, batch[keys.IMAGE])  # one lam for the batch, read back from every image
    torch.testing.assert_close(lam, lam[:1].expand(4))
    torch.testing.assert_close(batch[keys.TARGET], lam[0] * multi_hot + (1 - lam[0]) * multi_hot.roll(1, 0))
    assert batch[keys.MIXED] is True


def test_binary_mixing_gives_the_probability_of_positive() -> None:
    torch.manual_seed(2)
    mixer = BatchMixer(mixup_alpha=0.4, num_classes=2, task="binary")
    target = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    images = constant_images(4)
    batch = mixer({keys.IMAGE: images.clone(), keys.TARGET: target.clone(), keys.INDEX: torch.arange(4)})
    lam = float(mixup_lambda(images, batch[keys.IMAGE])[0])
    torch.testing.assert_close(batch[keys.TARGET], lam * target + (1 - lam) * target.roll(1, 0))
    assert build_task("binary", 2).is_soft(batch[keys.TARGET])


def test_mixer_options_are_checked() -> None:
    with pytest.raises(ValueError, match="mixup_alpha. > 0 or .cutmix_alpha. > 0"):
        BatchMixer(0.0, 0.0, num_classes=3)
    with pytest.raises(ValueError, match="must be >= 0"):
        BatchMixer(-0.1, 1.0, num_classes=3)


def test_train_loader_mixes_dict_batches_and_keeps_their_keys(image_folder: Path, one_thread) -> None:
    dm = ImageFolderDataModule(
        str(image_folder), batch_size=4, num_workers=0, image_size=32, resize_size=32, mixup_alpha=0.2, cutmix_alpha=1.0
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.collate_fn, MixingCollate)
    batch = next(iter(loader))
    assert set(batch) == {keys.IMAGE, keys.TARGET, keys.INDEX, keys.PATH, keys.MIXED}
    assert batch[keys.TARGET].shape == (4, 2) and len(batch[keys.PATH]) == 4
    torch.testing.assert_close(batch[keys.TARGET].sum(1), torch.ones(4))
    assert keys.MIXED not in next(iter(dm.val_dataloader()))  # evaluation batches are never mixed


# ------------------------------------------------------------------ metrics of mixed batches
def tiny_model(task: str, num_classes: int) -> FinetuneClassifier:
    torch.manual_seed(0)
    return FinetuneClassifier(num_classes=num_classes, backbone="resnet18", task=task)


def metrics_updated(model: FinetuneClassifier) -> bool:
    return any(metric.update_called for metric in model.train_metrics.values())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_mixed_multilabel_batch_updates_no_hard_label_metric(one_thread) -> None:
    # Pairs with the same labels: the mixed targets stay 0/1, so only the `mixed` key tells the module.
    target = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    batch = {keys.IMAGE: torch.randn(4, 3, 32, 32), keys.TARGET: target, keys.INDEX: torch.arange(4)}
    model = tiny_model("multilabel", 3)
    mixed = BatchMixer(mixup_alpha=0.4, num_classes=3, task="multilabel")(batch)
    assert not model.task.is_soft(mixed[keys.TARGET])
    model.training_step(mixed, 0)
    assert not metrics_updated(model)
    model.training_step(batch, 0)  # the same batch unmixed is scored
    assert metrics_updated(model)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_mixed_multiclass_batch_updates_no_hard_label_metric(one_thread) -> None:
    batch = {keys.IMAGE: torch.randn(4, 3, 32, 32), keys.TARGET: torch.tensor([0, 1, 2, 1]), keys.INDEX: torch.arange(4)}
    model = tiny_model("multiclass", 3)
    out = model.training_step(BatchMixer(cutmix_alpha=1.0, num_classes=3)(batch), 0)
    assert not metrics_updated(model) and torch.isfinite(out[keys.LOSS])
    model.training_step(batch, 0)
    assert metrics_updated(model)


def test_soft_targets_are_captioned_with_their_main_classes() -> None:
    multiclass = build_task("multiclass", 3, ["cat", "dog", "fox"])
    assert multiclass.target_text(torch.tensor([0.3, 0.0, 0.7])) == "fox 0.70+cat 0.30"
    assert multiclass.target_text(torch.tensor([2.0])) == "fox"  # a hard label as the best/worst callback holds it
    multilabel = build_task("multilabel", 3, ["cat", "dog", "fox"])
    assert multilabel.target_text(torch.tensor([1.0, 0.25, 0.75])) == "cat 1.00+fox 0.75+dog 0.25"
    assert multilabel.target_text(torch.tensor([1.0, 0.0, 1.0])) == "cat+fox"
    binary = build_task("binary", 2, ["ant", "bee"])
    assert binary.target_text(torch.tensor([0.4])) == "bee 0.40" and binary.target_text(torch.tensor([1.0])) == "bee"


# ------------------------------------------------------------------ augmentation presets and random erasing
def test_presets_are_the_documented_ones() -> None:
    assert AUGMENT_PRESETS == ("none", "basic", "randaugment", "trivialaugment", "autoaugment")


@pytest.mark.parametrize("augment", AUGMENT_PRESETS)
def test_each_augment_preset_builds_and_runs_on_a_32px_image(augment: str) -> None:
    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy())
    pipeline = train_transform(PRE32, (0.5, 1.0), hflip=True, augment=augment)
    out = pipeline(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    kinds = {type(t) for t in pipeline.transforms}
    policy = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide, "autoaugment": v2.AutoAugment}.get(augment)
    assert (policy in kinds) if policy else not kinds & {v2.RandAugment, v2.TrivialAugmentWide, v2.AutoAugment}
    assert (v2.RandomResizedCrop in kinds) == (augment != "none")
    if augment == "none":  # the evaluation geometry: nothing random
        torch.testing.assert_close(pipeline(image), out)


def test_unknown_preset_is_an_error() -> None:
    with pytest.raises(ValueError, match="Unknown `augment` preset 'randaug'.*trivialaugment"):
        train_transform(PRE32, augment="randaug")  # type: ignore[arg-type]


def test_random_erasing_erases_a_rectangle_of_the_normalized_image() -> None:
    torch.manual_seed(0)
    image = Image.new("RGB", (32, 32), (200, 30, 90))  # normalized: no channel is 0 anywhere
    plain = train_transform(PRE32, augment="none")(image)
    assert bool((plain != 0).all())
    erased = train_transform(PRE32, augment="none", random_erasing=1.0)(image)
    zero = (erased == 0).all(dim=0)
    rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
    assert 0 < int(zero.sum()) < 32 * 32
    # One rectangle set to 0 (the mean colour); every other pixel as before.
    assert int(zero.sum()) == len(rows) * len(cols) and bool(zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all())
    torch.testing.assert_close(erased[:, ~zero], plain[:, ~zero])
    with pytest.raises(ValueError, match="probability in \\[0, 1\\]"):
        train_transform(PRE32, random_erasing=1.5)


def test_the_data_module_builds_the_preset_and_keeps_the_old_options(image_folder: Path) -> None:
    dm = ImageFolderDataModule(str(image_folder), num_workers=0, image_size=32, resize_size=32, crop_scale=(0.5, 1.0), hflip=False)
    kinds = [type(t) for t in dm.train_transform.transforms]
    assert v2.RandomResizedCrop in kinds and v2.RandomHorizontalFlip not in kinds  # `basic`, the default
    assert dm.train_transform.transforms[0].scale == (0.5, 1.0)
    dm = ImageFolderDataModule(str(image_folder), num_workers=0, image_size=32, augment="autoaugment", random_erasing=0.25)
    kinds = [type(t) for t in dm.train_transform.transforms]
    assert kinds.index(v2.AutoAugment) < kinds.index(v2.Normalize) < kinds.index(v2.RandomErasing)
    dm = ImageFolderDataModule(str(image_folder), num_workers=0, image_size=32, train_augment=False)
    assert dm.train_transform is dm.eval_transform


@pytest.mark.parametrize(
    "options, message",
    [
        ({"train_augment": False, "augment": "trivialaugment"}, "train_augment: false"),
        ({"train_augment": False, "mixup_alpha": 0.2}, "train_augment: false"),
        ({"train_transform": v2.Identity(), "random_erasing": 0.25}, "replaces the whole training pipeline"),
        ({"augment": "randaug"}, "Unknown `augment` preset"),
        ({"cutmix_alpha": -1.0}, "must be >= 0"),
    ],
)
def test_conflicting_augmentation_options_are_errors(image_folder: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(str(image_folder), num_workers=0, image_size=32, **options)

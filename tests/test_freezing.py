"""Module-level tests of freezing, parameter groups, the frozen-backbone fast path and feature caching."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from tiny_images import TinyImages
from torch.utils.data import DataLoader

from lit_finetune.modules.classifier import FinetuneClassifier
from lit_finetune.optim.freezing import is_held_in_eval
from lit_finetune.optim.lr_finder import suggest_lr
from lit_finetune.optim.schedulers import WarmupCosineLR

pytestmark = pytest.mark.usefixtures("one_thread")


def loaders(n: int = 16, batch_size: int = 8, shuffle: bool = False, noise: float = 0.0) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(TinyImages(n, noise=noise), batch_size=batch_size, shuffle=shuffle, generator=generator)
    return train, DataLoader(TinyImages(8, seed=1), batch_size=batch_size)


def make_model(optimizer=None, **kwargs) -> FinetuneClassifier:
    seed_everything(0, verbose=False)
    optimizer = optimizer or partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return FinetuneClassifier(num_classes=2, backbone="resnet18", optimizer=optimizer, **kwargs)


def fit(model: FinetuneClassifier, epochs: int = 2, callbacks=(), shuffle: bool = False, noise: float = 0.0, logger=False) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )
    trainer.fit(model, *loaders(shuffle=shuffle, noise=noise))
    return trainer


def state(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    now = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, now[k])}


def test_frozen_backbone_is_bit_equal_and_runs_without_autograd() -> None:
    model = make_model(freeze="backbone", train_bn=False)
    before = state(model, "backbone.")  # parameters and BN running statistics
    head_before = state(model, "head.")
    seen = []
    model.backbone.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_grad_enabled(), m.training, o.requires_grad, model.training))
    )
    trainer = fit(model)
    assert changed(before, model) == set()
    assert changed(head_before, model) == set(head_before)
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["head", "head.no_decay"]
    train_calls = [s for s in seen if s[3]]
    assert train_calls and all(s[:3] == (False, False, False) for s in train_calls)
    assert model.backbone.training  # modes restored after each forward


def test_first_k_with_train_bn_keeps_batchnorm_training() -> None:
    model = make_model(freeze=2, train_bn=True)  # stem and layer1 frozen, their BN layers train
    before = state(model, "backbone.")
    fit(model)
    moved = changed(before, model)
    frozen_part = {k for k in before if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1."))}
    frozen_weights = {k for k in frozen_part if ".bn" not in k and not k.startswith("backbone.bn1")}
    assert moved & frozen_part == frozen_part - frozen_weights  # BN parameters and statistics moved
    assert moved & frozen_weights == set()  # conv weights did not
    assert {k for k in before if k.startswith("backbone.layer4.")} <= moved
    assert not model.backbone_is_frozen()


def test_first_k_without_train_bn_holds_statistics() -> None:
    model = make_model(freeze=2, train_bn=False)
    assert is_held_in_eval(model.backbone.bn1) and not is_held_in_eval(model.backbone.layer2[0].bn1)
    before = state(model, "backbone.")
    fit(model)
    moved = changed(before, model)
    assert {k for k in moved if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1."))} == set()
    assert "backbone.layer2.0.bn1.running_mean" in moved


@pytest.mark.parametrize(
    "optimizer",
    [
        partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
        partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
    ],
)
def test_zero_lr_backbone_groups_keep_weights(optimizer) -> None:
    model = make_model(optimizer=optimizer, backbone_lr_mult=0.0)
    params_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    trainer = fit(model)
    assert all(torch.equal(p, params_before[n]) for n, p in model.backbone.named_parameters())
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["backbone"] == lrs["backbone.no_decay"] == 0.0 and lrs["head"] > 0


def test_groups_lr_and_monitor_names(tmp_path) -> None:
    model = make_model(head_lr=0.2, backbone_lr_mult=0.1, layer_decay=0.5, freeze=1)
    monitor = LearningRateMonitor(log_weight_decay=True)
    trainer = fit(model, epochs=1, callbacks=[monitor], logger=CSVLogger(tmp_path))
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    expected_names = ["head", "head.no_decay"] + [f"backbone.stage{i}{s}" for i in range(1, 5) for s in ("", ".no_decay")]
    assert list(groups) == expected_names  # stage0 (the stem) is frozen and left out
    for i in range(1, 5):
        assert groups[f"backbone.stage{i}"]["lr"] == pytest.approx(0.2 * 0.1 * 0.5 ** (5 - i))
        assert groups[f"backbone.stage{i}.no_decay"]["weight_decay"] == 0.0
        assert groups[f"backbone.stage{i}"]["weight_decay"] == 1e-3
    assert set(monitor.lrs) == {f"lr-SGD/{name}" for name in expected_names}
    assert monitor.lrs["lr-SGD/backbone.stage3"] == [pytest.approx(0.2 * 0.1 * 0.25)]


def test_plain_recipe_logs_one_lr_per_weight_decay(tmp_path) -> None:
    model = make_model()  # no layer decay, backbone_lr_mult 1: every part has the same hyperparameters
    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    trainer = fit(model, epochs=1, callbacks=[monitor], logger=CSVLogger(tmp_path))
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["all", "all.no_decay"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert set(monitor.lrs) == {"lr-SGD/all", "lr-SGD/all.no_decay"}
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]


def test_warmup_cosine_length_comes_from_the_trainer() -> None:
    model = make_model(
        lr_scheduler=partial(WarmupCosineLR, warmup_steps=1, min_lr_ratio=0.1), scheduler_interval="step", backbone_lr_mult=0.5
    )
    trainer = fit(model, epochs=2)  # 2 batches per epoch: 4 optimizer steps
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 4 and scheduler.last_epoch == 4
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["head"] == pytest.approx(0.05 * 0.1) and lrs["backbone"] == pytest.approx(0.05 * 0.5 * 0.1)


def test_cached_features_match_uncached_training() -> None:
    results = {}
    for cache in (False, True):
        model = make_model(freeze="backbone", cache_features=cache, head_hidden_dims=[16])
        calls = []
        model.backbone.register_forward_hook(lambda m, i, o, calls=calls: calls.append(len(o)))
        fit(model, epochs=3, shuffle=True)
        results[cache] = (state(model, "head."), sum(calls), model)
    for name, value in results[False][0].items():
        torch.testing.assert_close(results[True][0][name], value, rtol=1e-5, atol=1e-6)
    # Uncached: 3 epochs x (16 train + 8 val) samples. Cached: each sample once, plus one verification batch.
    assert results[False][1] == 3 * 24
    assert results[True][1] == 24 + 8
    assert len(results[True][2].feature_caches["train"]) == 16


def test_cache_rejects_random_transforms() -> None:
    model = make_model(freeze="backbone", cache_features=True)
    with pytest.raises(RuntimeError, match="deterministic train/val transforms"):
        fit(model, epochs=2, noise=0.5)


def test_cache_is_unused_when_the_backbone_trains() -> None:
    model = make_model(freeze=1, cache_features=True)
    fit(model, epochs=1)
    assert len(model.feature_caches["train"]) == 0


@pytest.mark.parametrize(("spec", "match"), [("head", "not understood"), (["backbone.nope*"], "match no parameter"), (9, "has 5 stages")])
def test_bad_freeze_specs_fail_at_construction(spec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_model(freeze=spec)


def test_lr_finder_sets_the_head_lr(tmp_path) -> None:
    model = make_model(freeze="backbone")
    trainer = Trainer(
        max_epochs=20, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    train, _ = loaders()
    plot = tmp_path / "lr_find.png"
    suggestion = suggest_lr(trainer, model, train_dataloaders=train, num_training=20, early_stop_threshold=None, plot_path=str(plot))
    assert suggestion is not None and model.head_lr == suggestion and model.hparams.head_lr == suggestion
    assert plot.stat().st_size > 0
    optimizer = model.configure_optimizers()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"head": suggestion, "head.no_decay": suggestion}

"""FinetuneClassifier: losses per sample, exact epoch metrics, tasks, optimizer wiring, subclassing."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lit_finetune import FinetuneClassifier, ImageFolderDataModule, TaskLightningModule, keys
from lit_finetune.models.classifier import ClassifierNetwork
from lit_finetune.modules.options import TrainingOptions, resolve_loss
from lit_finetune.tasks import build_task


def tiny_batch(n: int = 4, classes: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        keys.IMAGE: torch.randn(n, 3, 32, 32, generator=g),
        keys.TARGET: torch.arange(n) % classes,
        keys.INDEX: torch.arange(n),
        keys.PATH: [f"img{i}.png" for i in range(n)],
    }


def test_step_output_carries_per_sample_losses() -> None:
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=3, backbone="resnet18").eval()
    batch = tiny_batch()
    out = model.validation_step(batch, 0)
    logits = model(batch[keys.IMAGE])[keys.LOGITS]
    expected = F.cross_entropy(logits, batch[keys.TARGET], reduction="none")
    torch.testing.assert_close(out[keys.SAMPLE_LOSS], expected)
    torch.testing.assert_close(out[keys.LOSS], expected.mean())
    assert not out[keys.SAMPLE_LOSS].requires_grad
    assert torch.equal(out[keys.INDEX], batch[keys.INDEX])


def test_label_smoothing_and_custom_loss() -> None:
    model = FinetuneClassifier(num_classes=3, label_smoothing=0.1)
    assert model.loss.label_smoothing == 0.1 and model.loss.reduction == "mean"
    # The configured loss keeps its meaning; callbacks read a detached per-sample copy.
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
    model = FinetuneClassifier(num_classes=3, loss=loss).eval()
    assert model.loss is loss and loss.reduction == "mean" and model.loss_per_sample.reduction == "none"
    batch = tiny_batch()
    out = model.validation_step(batch, 0)
    logits = out[keys.LOGITS]
    torch.testing.assert_close(out[keys.LOSS], F.cross_entropy(logits, batch[keys.TARGET], weight=loss.weight))
    torch.testing.assert_close(out[keys.SAMPLE_LOSS], F.cross_entropy(logits, batch[keys.TARGET], weight=loss.weight, reduction="none"))

    class NoReduction(nn.Module):
        def forward(self, preds, target):
            return preds.sum()

    with pytest.raises(ValueError, match="no `reduction` attribute"):
        FinetuneClassifier(num_classes=3, loss=NoReduction())


def test_binary_and_multilabel_tasks() -> None:
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=2, task="binary").eval()
    assert model.head.layers.fc.out_features == 1
    batch = tiny_batch(classes=2)
    out = model.validation_step(batch, 0)
    expected = F.binary_cross_entropy_with_logits(out[keys.LOGITS][:, 0], batch[keys.TARGET].float(), reduction="none")
    torch.testing.assert_close(out[keys.SAMPLE_LOSS], expected)
    pred = model.predict_step(batch, 0)
    p = torch.sigmoid(out[keys.LOGITS][:, 0])
    torch.testing.assert_close(pred["prob"], torch.where(p > 0.5, p, 1 - p))

    model = FinetuneClassifier(num_classes=4, task="multilabel").eval()
    batch[keys.TARGET] = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]).float()
    out = model.validation_step(batch, 0)
    expected = F.binary_cross_entropy_with_logits(out[keys.LOGITS], batch[keys.TARGET], reduction="none").mean(1)
    torch.testing.assert_close(out[keys.SAMPLE_LOSS], expected)


def test_bad_class_counts() -> None:
    with pytest.raises(ValueError, match="binary.*num_classes 1 or 2"):
        FinetuneClassifier(num_classes=3, task="binary")
    with pytest.raises(ValueError, match="3 class names given for num_classes=2"):
        FinetuneClassifier(num_classes=2, class_names=["a", "b", "c"])


def test_validation_loss_is_the_exact_mean_over_uneven_batches(image_folder) -> None:
    # 8 validation images in batches of 3 (3 + 3 + 2): a mean of batch means would be wrong.
    dm = ImageFolderDataModule(str(image_folder), batch_size=3, num_workers=0, image_size=32, resize_size=32)
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=2, backbone="resnet18")
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    model.eval()
    images = torch.stack([dm.val_set[i][keys.IMAGE] for i in range(len(dm.val_set))])
    targets = torch.tensor([dm.val_set[i][keys.TARGET] for i in range(len(dm.val_set))])
    with torch.no_grad():
        logits = model(images)[keys.LOGITS]
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert metrics["val/acc"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())


def test_optimizer_and_scheduler_callables() -> None:
    model = FinetuneClassifier(
        num_classes=3,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD) and config["optimizer"].param_groups[0]["lr"] == 0.1
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in config["optimizer"].param_groups for p in g["params"]} == trainable


class FinetuneWithFeaturePenalty(FinetuneClassifier):
    """The README's subclass: an auxiliary loss on the pooled features."""

    def __init__(self, *args, feature_penalty: float = 1e-3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feature_penalty = feature_penalty

    def forward(self, images, return_features=True):
        return super().forward(images, return_features=True)

    def loss_terms(self, outputs, target):
        terms = super().loss_terms(outputs, target)  # {"loss": the configured loss}
        terms["loss_features"] = self.feature_penalty * outputs[keys.FEATURES].pow(2).sum(1).mean()
        return terms  # their sum is optimized; each is logged (train/loss_features, ...)


class TrainingFlags(Callback):
    """Records the network's own training flag at each training and validation batch, and whether any epoch
    metric still holds values at the start of an epoch (Lightning must have reset what was logged)."""

    def __init__(self) -> None:
        self.flags: dict[str, list[bool]] = {"train": [], "val": []}
        self.stale: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.flags["train"].append(pl_module.network.training)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.flags["val"].append(pl_module.network.training)

    def _check_reset(self, pl_module, stage: str) -> None:
        metrics = {f"{stage}_loss": pl_module.get_submodule(f"{stage}_loss"), **dict(pl_module.get_submodule(f"{stage}_metrics").items())}
        metrics.update({k: m for k, m in pl_module.loss_term_metrics.items() if k.startswith(stage)})
        self.stale += [name for name, metric in metrics.items() if metric.update_called]

    def on_train_epoch_start(self, trainer, pl_module):
        self._check_reset(pl_module, "train")

    def on_validation_epoch_start(self, trainer, pl_module):
        self._check_reset(pl_module, "val")


def test_readme_subclass_adds_its_auxiliary_loss() -> None:
    torch.manual_seed(0)
    model = FinetuneWithFeaturePenalty(num_classes=3, feature_penalty=0.5, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    assert model.hparams.feature_penalty == 0.5 and model.hparams.num_classes == 3 and "loss" not in model.hparams
    batch = tiny_batch()
    out = FinetuneWithFeaturePenalty(num_classes=3).eval().validation_step(batch, 0)  # by hand: per-sample losses are computed
    ce = F.cross_entropy(out[keys.LOGITS], batch[keys.TARGET], reduction="none")
    torch.testing.assert_close(out[keys.SAMPLE_LOSS], ce)  # callbacks rank samples by the configured loss
    loader = DataLoader([{k: v[i] for k, v in batch.items()} for i in range(4)], batch_size=4)
    flags = TrainingFlags()
    trainer = Trainer(
        accelerator="cpu", max_epochs=2, val_check_interval=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[flags],
    )  # fmt: skip
    trainer.fit(model.train(), loader, loader)
    # The network is a registered child: Lightning's eval/train switches around validation reach it.
    assert flags.flags == {"train": [True, True], "val": [False, False, False]}
    assert flags.stale == []  # epoch values are logged once an epoch and do not carry over
    with torch.no_grad():
        out = model.eval()(batch[keys.IMAGE])
    ce = F.cross_entropy(out[keys.LOGITS], batch[keys.TARGET])
    penalty = 0.5 * out[keys.FEATURES].pow(2).sum(1).mean()
    # Every term the subclass returns is logged (lr 0: the weights did not move, so the last validation saw these values).
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["val/loss"] == pytest.approx(float(ce + penalty), rel=1e-4)
    assert logged["val/loss_main"] == pytest.approx(float(ce), rel=1e-4)
    assert logged["val/loss_features"] == pytest.approx(float(penalty), rel=1e-4)
    assert {"train/loss", "train/loss_epoch", "train/loss_main", "train/loss_features"} <= set(logged)


def test_network_is_a_registered_child_and_checkpoints_keep_their_names() -> None:
    model = FinetuneClassifier(num_classes=3)
    assert dict(model.named_children())["network"] is model.network
    assert not model.eval().network.training and model.train().network.training
    state = model.state_dict()
    # One copy of each weight, under the names checkpoints always had (backbone.*, head.*).
    expected = {f"backbone.{k}" for k in model.backbone.state_dict()} | {f"head.{k}" for k in model.head.state_dict()}
    assert set(state) == expected
    assert all(name.startswith(("backbone.", "head.")) for name, _ in model.named_parameters())
    other = FinetuneClassifier(num_classes=3)
    other.load_state_dict(state)  # strict: the network's entries are filled in from backbone.* and head.*
    for name, tensor in other.network.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_per_sample_losses_only_for_callbacks_that_read_them() -> None:
    class Reader(Callback):
        needs_sample_losses = True

    seen: list[bool] = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(keys.SAMPLE_LOSS in outputs)

    batch = tiny_batch()
    loader = DataLoader([{k: v[i] for k, v in batch.items()} for i in range(4)], batch_size=2)
    for callbacks, expected in (([Spy()], False), ([Spy(), Reader()], True)):
        seen.clear()
        model = FinetuneClassifier(num_classes=3)
        trainer = Trainer(
            accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=callbacks
        )
        trainer.fit(model, loader)
        assert seen == [expected]


def test_global_dice_is_logged_with_its_exact_epoch_value(image_folder) -> None:
    from lit_finetune.losses import DiceLoss, dice_loss

    dm = ImageFolderDataModule(str(image_folder), batch_size=3, num_workers=0, image_size=32, resize_size=32)
    torch.manual_seed(0)
    model = FinetuneClassifier(num_classes=2, backbone="resnet18", loss=DiceLoss(task="multiclass", num_classes=2))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    model.eval()
    images = torch.stack([dm.val_set[i][keys.IMAGE] for i in range(len(dm.val_set))])
    targets = torch.tensor([dm.val_set[i][keys.TARGET] for i in range(len(dm.val_set))])
    with torch.no_grad():
        logits = model(images)[keys.LOGITS]
    expected = dice_loss(logits, targets, task="multiclass", num_classes=2)
    assert logged == pytest.approx(expected.item(), rel=1e-5)
    # ... which is not the mean of batch values (3 + 3 + 2 samples).
    batch_means = [dice_loss(logits[i : i + 3], targets[i : i + 3], task="multiclass", num_classes=2) for i in (0, 3, 6)]
    assert abs(torch.stack(batch_means).mean().item() - logged) > 1e-6


def test_checkpoint_with_a_weighted_loss_loads_into_a_model_built_without_it(tmp_path) -> None:
    # The loss's class weights are a buffer in the state_dict; they belong to the config, not the checkpoint.
    from lightning.pytorch import Trainer as _Trainer

    weighted = FinetuneClassifier(num_classes=3, loss=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0])))
    trainer = _Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(weighted)
    trainer.save_checkpoint(tmp_path / "weighted.ckpt")
    assert "loss.weight" in torch.load(tmp_path / "weighted.ckpt", weights_only=True)["state_dict"]
    plain = FinetuneClassifier.load_from_checkpoint(tmp_path / "weighted.ckpt", weights_only=True)
    assert torch.equal(plain.head.layers.fc.weight, weighted.head.layers.fc.weight)
    assert "loss.weight" not in plain.state_dict()
    # ... and the other way round: the configured weights stay.
    trainer.strategy.connect(plain)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    again = FinetuneClassifier.load_from_checkpoint(
        tmp_path / "plain.ckpt", weights_only=True, loss=nn.CrossEntropyLoss(weight=torch.tensor([3.0, 2.0, 1.0]))
    )
    assert again.loss.weight.tolist() == [3.0, 2.0, 1.0]


def test_a_statistics_loss_is_computed_once_a_step_and_its_epoch_value_is_exact() -> None:
    from lit_finetune import SegmentationModule

    torch.manual_seed(0)
    model = SegmentationModule(num_classes=3, decoder_channels=[8, 8, 8, 8]).train()
    loss_class = type(model.loss)
    calls = []
    original = loss_class.sample_statistics

    def counted(self, preds, target):
        calls.append(1)
        return original(self, preds, target)

    images = torch.randn(4, 3, 32, 32)
    masks = torch.randint(0, 3, (4, 32, 32))
    masks[0, :4] = 255
    batch = {keys.IMAGE: images, keys.TARGET: masks, keys.INDEX: torch.arange(4)}
    model.sample_losses_wanted = False  # as in a run without a callback that reads them
    loss_class.sample_statistics = counted
    try:
        out = model.training_step(batch, 0)
    finally:
        loss_class.sample_statistics = original
    assert len(calls) == 1  # the optimized loss and the epoch statistics come from one pass
    with torch.no_grad():
        expected = model.loss(model(images)[keys.LOGITS], masks)
    torch.testing.assert_close(out[keys.LOSS].detach(), expected)
    torch.testing.assert_close(model.train_loss.compute(), expected)
    assert out[keys.LOSS].requires_grad and keys.SAMPLE_LOSS not in out


class TinyTaskModule(TaskLightningModule):
    """A module of one's own on the shared base: task, network, loss and options handed over in one call."""

    def __init__(self, num_classes: int, lr: float = 0.1, freeze: str = "none") -> None:
        task = build_task("multiclass", num_classes)
        backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        options = TrainingOptions(freeze=freeze)
        super().__init__(
            task,
            ClassifierNetwork(backbone, nn.Linear(4, num_classes)),
            resolve_loss(task, None),
            partial(torch.optim.SGD, lr=lr),
            options=options,
        )

    def forward(self, images):
        return self.network(images)


def test_a_module_of_ones_own_is_built_in_one_call() -> None:
    model = TinyTaskModule(num_classes=3, lr=0.5, freeze="backbone")
    assert dict(model.hparams) == {"num_classes": 3, "lr": 0.5, "freeze": "backbone"}  # the subclass's arguments only
    assert not any(p.requires_grad for p in model.backbone.parameters()) and model.backbone_is_frozen()
    assert [p for g in model.configure_optimizers().param_groups for p in g["params"]] == list(model.head.parameters())
    batch = tiny_batch()
    out = model.validation_step(batch, 0)
    torch.testing.assert_close(out[keys.LOSS], F.cross_entropy(out[keys.LOGITS], batch[keys.TARGET]))
    with pytest.raises(ValueError, match="layer_decay"):
        TrainingOptions(layer_decay=0)

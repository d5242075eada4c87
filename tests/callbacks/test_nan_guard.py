"""NanGuard: a layer that emits NaN on a chosen batch is named, the run stops, and nothing is left behind."""

from __future__ import annotations

import torch
from callback_helpers import make_datamodule, make_model, make_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_finetune import keys
from lit_finetune.callbacks.nan_guard import NanGuard
from lit_finetune.modules.classifier import FinetuneClassifier

BAD_BATCH = 1


class NanSwitch(nn.Module):
    """Identity, or NaN everywhere while ``armed``."""

    armed = False

    def forward(self, x):
        return x * float("nan") if self.armed else x


class NanModel(FinetuneClassifier):
    def build_backbone(self, spec):
        backbone, dim = super().build_backbone(spec)
        backbone.layer3 = nn.Sequential(backbone.layer3, NanSwitch())
        return backbone, dim


class Arm(Callback):
    """Arms the NaN layer on one batch of the first epoch and remembers that batch's dataset indices."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        armed = trainer.current_epoch == 0 and batch_idx == BAD_BATCH
        pl_module.backbone.layer3[1].armed = armed
        if armed:
            self.indices = batch[keys.INDEX].tolist()
            self.state_before = {k: v.clone() for k, v in pl_module.state_dict().items()}


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules()) and not (
        nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    )


def _nan_model() -> NanModel:
    reference = make_model()
    model = NanModel(**{k: v for k, v in reference.hparams.items()}, optimizer=reference.optimizer_factory)
    return model


def test_stops_and_names_the_layer_and_batch(tmp_path, image_root):
    guard, arm = NanGuard(dirpath=str(tmp_path / "nan")), Arm()
    model = _nan_model()
    trainer = make_trainer(tmp_path, [arm, guard], max_epochs=2)
    trainer.fit(model, datamodule=make_datamodule(image_root))

    assert trainer.global_step == BAD_BATCH + 1 < 2 * 3  # stopped at the bad step, not after 2 epochs
    assert guard.culprit == "backbone.layer3.1"
    report = guard.report_path.read_text()
    assert "First module with a non-finite output: 'backbone.layer3.1' (NanSwitch)" in report
    assert f"batch {BAD_BATCH} of the epoch" in report and str(arm.indices) in report
    assert "0 NaN" in report.split("input 0:")[1].splitlines()[0]  # its input was finite
    assert _no_hooks(model)

    saved_batch = torch.load(guard.batch_path)
    assert saved_batch[keys.INDEX].tolist() == arm.indices
    loaded = NanModel.load_from_checkpoint(guard.checkpoint_path, optimizer=torch.optim.SGD)
    state = loaded.state_dict()
    for name, value in arm.state_before.items():  # weights and BatchNorm statistics from before the bad step
        assert torch.equal(state[name], value), name
    assert all(v.isfinite().all() for v in model.state_dict().values() if v.is_floating_point())


def test_skip_goes_on_with_finite_weights(tmp_path, image_root):
    guard = NanGuard(action="skip", detect_anomaly=False, dirpath=str(tmp_path / "nan"))
    model = _nan_model()
    trainer = make_trainer(tmp_path, [Arm(), guard], max_epochs=1, limit_val_batches=1)
    trainer.fit(model, datamodule=make_datamodule(image_root))
    assert trainer.global_step == 3 and guard.culprit == "backbone.layer3.1"
    assert all(v.isfinite().all() for v in model.state_dict().values() if v.is_floating_point())
    assert _no_hooks(model)


def test_only_running_statistics_of_training_layers_are_copied_into_reused_tensors():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    model.register_buffer("table", torch.zeros(1000, 1000))  # a constant buffer: never copied
    model[2].eval()  # a frozen BatchNorm: its statistics do not move
    guard = NanGuard()
    guard.on_train_batch_start(None, model, {}, 0)
    assert [tuple(b.shape) for b in guard._buffers] == [(4,), (4,), ()]
    first = [b.data_ptr() for b in guard._buffers]
    model(torch.randn(2, 3, 5, 5))
    before_second = [b.clone() for b in (model[1].running_mean, model[1].running_var, model[1].num_batches_tracked)]
    guard.on_train_batch_start(None, model, {}, 1)
    assert [b.data_ptr() for b in guard._buffers] == first  # no new allocation per step
    assert all(torch.equal(a, b) for a, b in zip(guard._buffers, before_second, strict=False))
    model[2].train()  # unfrozen: its statistics are taken from now on
    guard.on_train_batch_start(None, model, {}, 2)
    assert len(guard._buffers) == 6

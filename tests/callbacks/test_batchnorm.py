"""BatchNormMomentum: the warning when a run barely moves the BatchNorm statistics (mobilenet_v3's momentum 0.01 on a
few batches), and the momentum option that makes the running statistics describe the data."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "segmentation"))
from seg_model_helpers import ShapesDataset, loader, tiny_module

from lit_finetune import BatchNormMomentum
from lit_finetune.callbacks.batchnorm import suggested_momentum, trained_batchnorms, updated_share

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(callback: BatchNormMomentum) -> tuple[torch.nn.Module, list[str]]:
    model = tiny_module(backbone="mobilenet_v3_large", decoder_channels=[8, 8, 8, 8])
    data = ShapesDataset(n=8, size=32)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(data, batch_size=4, shuffle=True))  # 2 batches x 2 epochs: 4 BatchNorm updates
    return model, [str(w.message) for w in caught if "BatchNorm" in str(w.message)]


def first_layer_error(model: torch.nn.Module) -> float:
    """|running mean - the data's mean| / |the data's mean| of the first BatchNorm layer, over its channels."""
    layer = trained_batchnorms(model)[0]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    model.eval()
    with torch.no_grad():
        model(ShapesDataset(n=8, size=32).images)
    handle.remove()
    data_mean = seen[0].mean(dim=(0, 2, 3))
    return float((layer.running_mean - data_mean).norm() / data_mean.norm())


def test_mobilenet_v3_on_a_few_batches_warns_and_the_momentum_option_fixes_the_statistics() -> None:
    model, warned = fit(BatchNormMomentum())
    assert trained_batchnorms(model)[0].momentum == 0.01  # the encoder's (the decoder's layers have 0.1)
    assert len(warned) == 1 and "momentum 0.01 over the run's 4 training batches replaces 4%" in warned[0]
    assert f"--batchnorm.momentum {suggested_momentum(4)}" in warned[0] and suggested_momentum(4) == 0.53
    stale = first_layer_error(model)

    fixed, warned = fit(BatchNormMomentum(momentum=0.53))
    assert warned == [] and {layer.momentum for layer in trained_batchnorms(fixed)} == {0.53}
    assert stale > 0.8 and first_layer_error(fixed) < 0.3  # the running mean now describes the data


def test_share_and_suggestion_follow_the_update_rule() -> None:
    assert updated_share(0.01, 36) == pytest.approx(1 - 0.99**36) and updated_share(None, 3) == 1.0
    assert updated_share(suggested_momentum(36), 36) >= 0.95 and suggested_momentum(10_000) == 0.1
    with pytest.raises(ValueError, match="momentum"):
        BatchNormMomentum(momentum=0.0)

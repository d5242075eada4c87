"""``compile=True``: two epochs with validation and the hook-using callbacks, no recompiles after the first steps.

The ``aot_eager`` backend is used here: graph capture, guards and recompiles are Dynamo's and the same for
every backend, and ``inductor`` would spend minutes generating C++ on the two shared test cores.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from recipes_module_helpers import parameters, tiny_data, tiny_model, tiny_trainer

from lit_finetune import keys
from lit_finetune.callbacks import GradCAM, GradientStats, NanGuard

torch_dynamo = pytest.importorskip("torch._dynamo")


def dynamo_counts() -> dict[str, int]:
    """Graphs compiled (a recompile adds one) and graph breaks so far (``torch._dynamo.utils.counters``)."""
    counters = torch._dynamo.utils.counters
    return {"graphs": int(counters["stats"]["unique_graphs"]), "graph_breaks": sum(counters["graph_break"].values())}


class EpochCounts(Callback):
    """Dynamo's counts at the end of every training epoch (after its validation)."""

    def __init__(self) -> None:
        self.after_epoch: list[dict[str, int]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.after_epoch.append(dynamo_counts())


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("freeze", ["none", "backbone"])
def test_two_epochs_compile_once(freeze: str, image_folder: Path, tmp_path: Path, one_thread, fresh_dynamo) -> None:
    torch.manual_seed(0)
    model = tiny_model(compile=True, compile_backend="aot_eager", freeze=freeze)
    counts = EpochCounts()
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    callbacks = [counts, NanGuard(), GradientStats(), GradCAM(num_images=2, tile_size=32)]
    trainer = tiny_trainer(tmp_path, max_epochs=2, log_every_n_steps=1, logger=logger, callbacks=callbacks)
    # Batches of 6: training 6, 6, 4 and validation 6, 2, so the first epoch also meets new batch sizes.
    trainer.fit(model, datamodule=tiny_data(image_folder, batch_size=6, backbone="resnet18"))  # backbone: the logger compares hparams
    first, second = counts.after_epoch
    assert first["graphs"] > 0  # the steps ran compiled
    assert second == first, f"recompiled in the second epoch: {first} -> {second}"
    assert first["graph_breaks"] == 0, dict(torch._dynamo.utils.counters["graph_break"])
    # Grad-CAM's hooks fired: it ran on the eager modules at the validation epoch ends.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert any(tag.startswith("zz-gradcam") for tag in EventAccumulator(logger.log_dir).Reload().Tags()["images"])


def test_compiled_steps_match_eager(image_folder: Path, one_thread, fresh_dynamo) -> None:
    torch.manual_seed(0)
    eager = tiny_model()
    compiled = tiny_model(compile=True, compile_backend="aot_eager")
    compiled.load_state_dict(eager.state_dict())
    data = tiny_data(image_folder)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for model in (eager, compiled):
        model.train()
        model.training_step(batch, 0)[keys.LOSS].backward()
    logits = compiled.validation_step(batch, 0)[keys.LOGITS]
    torch.testing.assert_close(logits, eager.validation_step(batch, 0)[keys.LOGITS], atol=1e-5, rtol=1e-4)
    grads = {n: p.grad for n, p in compiled.named_parameters()}
    for name, p in eager.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    # Outside the steps the eager modules run (hooks added later fire); the compiled graphs are not copied.
    assert Counter(type(m).__name__ for m in compiled.network._compiled_parts.values()) == Counter({"OptimizedModule": 2})
    assert parameters(compiled).keys() == parameters(eager).keys()


class Poison(Callback):
    """Sets one weight of ``backbone.layer3.0.conv1`` to infinity before the second training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            with torch.no_grad():
                pl_module.backbone.layer3[0].conv1.weight[0, 0, 0, 0] = float("inf")


def test_nan_guard_names_the_module_under_compile(image_folder: Path, tmp_path: Path, one_thread, fresh_dynamo) -> None:
    torch.manual_seed(0)
    model = tiny_model(compile=True, compile_backend="aot_eager")
    guard = NanGuard(dirpath=str(tmp_path / "nan"), detect_anomaly=False)
    trainer = tiny_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0, callbacks=[Poison(), guard])
    trainer.fit(model, datamodule=tiny_data(image_folder))
    assert trainer.global_step == 2  # stopped at the poisoned step
    # The replay runs the eager modules, so its forward hooks fire (a compiled graph would skip them).
    assert guard.culprit == "backbone.layer3.0.conv1"

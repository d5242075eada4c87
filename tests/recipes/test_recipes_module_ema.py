"""EMA of the weights (Lightning's EMAWeightAveraging) with FinetuneClassifier: validation, checkpoints, resume, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from recipes_module_helpers import parameters, tiny_data, tiny_model, tiny_trainer

from lit_finetune.cli import build_cli
from lit_finetune.export import export_checkpoint, load_exported

DECAY = 0.5  # a short memory, so that the average is far from both the first and the last weights


class HandAverage(Callback):
    """Records the raw weights after every optimizer step, applies the EMA by hand, and looks at validation."""

    def __init__(self) -> None:
        self.average: dict[str, torch.Tensor] | None = None
        self.raw: dict[str, torch.Tensor] = {}
        self.validated: list[dict[str, torch.Tensor]] = []
        self.expected: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw = parameters(pl_module)
        if self.average is None:  # torch's AveragedModel copies the weights at its first update
            self.average = dict(self.raw)
        else:
            self.average = {k: DECAY * self.average[k] + (1 - DECAY) * self.raw[k] for k in self.raw}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.validated.append(parameters(pl_module))
        self.expected.append(dict(self.average))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture
def ema_run(image_folder: Path, tmp_path: Path, one_thread):
    """Two epochs of 3 steps with EMA (decay 0.5); the hand-applied average and the checkpoints."""
    torch.manual_seed(0)
    model = tiny_model()
    hand = HandAverage()
    # Saved at every epoch end, as the command line's checkpoint does (one saved only at the end of training,
    # after Lightning copied the average into the module, would hold the average as the raw weights too).
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[EMAWeightAveraging(decay=DECAY), hand, checkpoints]
    )
    trainer.fit(model, datamodule=tiny_data(image_folder))
    return model, hand, tmp_path / "ckpt" / "last.ckpt"


def test_validation_runs_on_the_averaged_weights(ema_run) -> None:
    model, hand, _ = ema_run
    assert len(hand.validated) == 2
    for validated, expected in zip(hand.validated, hand.expected, strict=False):
        assert_same(validated, expected)
    # The average is not the raw weights: the EMA did something.
    assert max_difference(hand.expected[-1], hand.raw) > 1e-3
    # After fit, the module holds the average (Lightning copies it in at the end of training).
    assert_same(parameters(model), hand.average)


def test_checkpoint_holds_the_average_and_export_writes_it(ema_run, tmp_path: Path) -> None:
    _, hand, last = ema_run
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    saved = {k: v for k, v in checkpoint["state_dict"].items() if k in hand.average}
    assert_same(saved, hand.average)
    raw = {k: v for k, v in checkpoint["current_model_state"].items() if k in hand.raw}
    assert_same(raw, hand.raw)
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 6
    model, _ = load_exported(export_checkpoint(str(last), str(tmp_path / "exported"))["config"].rsplit("/", 1)[0])
    assert_same(parameters(model), hand.average)


class ResumeProbe(Callback):
    """Looks at the restored raw weights and EMA state when training resumes, and at the first update after it."""

    def __init__(self, ema: EMAWeightAveraging) -> None:
        self.ema = ema
        self.at_start: dict | None = None
        self.after_first_step: dict[str, torch.Tensor] | None = None
        self.raw_first_step: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        averaged = self.ema._average_model
        self.at_start = {"raw": parameters(pl_module), "average": parameters(averaged.module), "n": int(averaged.n_averaged)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.after_first_step is None:
            self.after_first_step = parameters(self.ema._average_model.module)
            self.raw_first_step = parameters(pl_module)


def test_resume_keeps_the_average(ema_run, image_folder: Path, tmp_path: Path) -> None:
    _, hand, last = ema_run
    torch.manual_seed(1)
    model = tiny_model()  # fresh weights: everything must come from the checkpoint
    ema = EMAWeightAveraging(decay=DECAY)
    probe = ResumeProbe(ema)
    trainer = tiny_trainer(tmp_path / "resume", max_epochs=3, limit_train_batches=1, limit_val_batches=1, callbacks=[ema, probe])
    trainer.fit(model, datamodule=tiny_data(image_folder), ckpt_path=str(last))
    assert probe.at_start["n"] == 6
    assert_same(probe.at_start["raw"], hand.raw)
    assert_same(probe.at_start["average"], hand.average)
    # The first update after resuming continues the average (it does not restart from the raw weights).
    continued = {k: DECAY * hand.average[k] + (1 - DECAY) * probe.raw_first_step[k] for k in hand.average}
    assert_same(probe.after_first_step, continued)


def test_ema_from_the_command_line_config(image_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "ema.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging\n"
        "      init_args:\n"
        "        decay: 0.998\n"
        "        update_starting_at_step: 10\n"
    )
    cli = build_cli(
        ["--config", str(config), "--data.root", str(image_folder), "--data.num_workers", "0", "--trainer.logger", "false"], run=False
    )
    ema = [cb for cb in cli.trainer.callbacks if isinstance(cb, EMAWeightAveraging)]
    assert len(ema) == 1 and ema[0].update_starting_at_step == 10
    assert not ema[0].should_update(step_idx=9) and ema[0].should_update(step_idx=10)

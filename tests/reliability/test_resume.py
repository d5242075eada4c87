"""Point 1 of the reliability issue: exact resume, also after a SIGTERM in the middle of an epoch."""

from __future__ import annotations

import torch
from cli_runner import run_cli
from reliability_helpers import subprocess_env, write_config

from lit_finetune.cli import main


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)  # our checkpoints load with weights_only


def _scalars(folder, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({e.step: e.value for e in accumulator.Scalars(tag)})
    assert len(values) == 2, values  # one value per epoch
    return values


def test_fit_then_resume_equals_uninterrupted_fit(tmp_path, dataset, one_epoch_run):
    # fit(2 epochs) in one go
    full = write_config(tmp_path / "full.yaml", dataset, tmp_path / "full", max_epochs=2)
    main(["fit", "--config", str(full)])
    # fit(1 epoch) (the shared fixture) + resume it in place to 2 epochs with `--ckpt_path last`
    resumed_runs = one_epoch_run["runs"]
    main(["fit", "--config", str(one_epoch_run["config"]), "--ckpt_path", "last"])

    versions = sorted(p.name for p in (resumed_runs / "run").iterdir())
    assert versions == ["version_0"], "`--ckpt_path last` must continue the run it resumes, not start a new folder"
    a = _load(tmp_path / "full/run/version_0/checkpoints/last.ckpt")
    b = _load(resumed_runs / "run/version_0/checkpoints/last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 6)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert repr(a["optimizer_states"]) == repr(b["optimizer_states"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["loops"] == b["loops"]
    assert repr(a["callbacks"]["RNGStateCheckpoint"]) == repr(b["callbacks"]["RNGStateCheckpoint"])
    ckpt_a = next(v for k, v in a["callbacks"].items() if k.startswith("ResumableModelCheckpoint"))
    ckpt_b = next(v for k, v in b["callbacks"].items() if k.startswith("ResumableModelCheckpoint"))
    assert ckpt_a["best_model_score"] == ckpt_b["best_model_score"]
    # Logged validation metrics of every epoch are the same (the resumed run logs into the same folder).
    for tag in ("val/loss", "val/acc"):
        assert _scalars(tmp_path / "full/run/version_0", tag) == _scalars(resumed_runs / "run/version_0", tag)


def test_sigterm_mid_epoch_saves_and_resume_loses_no_epoch(tmp_path, dataset):
    config = write_config(tmp_path / "config.yaml", dataset, tmp_path / "runs", max_epochs=2)
    checkpoints = tmp_path / "runs/run/version_0/checkpoints"
    command = ["fit", "--config", str(config)]
    # SIGTERM after the 2nd of 3 batches of epoch 1 (epoch 0 finished).
    first = run_cli(
        command + ["--trainer.callbacks+=reliability_helpers.SignalAt", "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=1"],
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=120,
    )
    assert first.returncode == 0, first.stderr[-3000:]  # a clean exit, not a crash
    assert "Run interrupted: checkpoint saved" in first.stderr + first.stdout
    interrupted = _load(checkpoints / "last-interrupted.ckpt")
    last = _load(checkpoints / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 3)  # the finished epoch
    assert (interrupted["epoch"], interrupted["global_step"]) == (1, 5)  # 2 batches into epoch 1

    second = run_cli(command + ["--ckpt_path", "last"], cwd=tmp_path, env=subprocess_env(), timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "last-interrupted.ckpt" in second.stderr + second.stdout  # resumed from the newest checkpoint
    final = _load(checkpoints / "last.ckpt")
    assert final["epoch"] == 1
    fit_loop = final["loops"]["fit_loop"]
    assert fit_loop["epoch_progress"]["total"]["processed"] == 2
    # Epoch 0 was not trained again; epoch 1 went on from its 3rd batch: as many steps as an uninterrupted run.
    assert final["global_step"] == fit_loop["epoch_loop.batch_progress"]["total"]["completed"] == 6
    assert not (checkpoints / "last-interrupted.ckpt").exists()  # stale once the run finished

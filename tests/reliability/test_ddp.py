"""Point 5: two CPU processes (gloo) through the CLI: equal weights, one checkpoint, exact validation metrics."""

from __future__ import annotations

import pytest
import torch
from cli_runner import run_cli
from reliability_helpers import subprocess_env, write_config

from lit_finetune.cli import build_cli


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, dataset):
    tmp = tmp_path_factory.mktemp("ddp")
    # The first two stages frozen, their BatchNorm layers held in eval mode; the rest trains with BN.
    frozen = {"freeze": 2, "train_bn": False}
    config = write_config(tmp / "config.yaml", dataset, tmp / "runs", max_epochs=1, model=frozen, batch_size=2)
    command = [
        "fit",
        "--config",
        str(config),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.callbacks+=reliability_helpers.SaveRankState",
        f"--trainer.callbacks.folder={tmp / 'ranks'}",
    ]
    result = run_cli(command, cwd=tmp, env=subprocess_env(), timeout=150)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return {"tmp": tmp, "config": config, "ranks": ranks, "log": result.stderr + result.stdout}


def test_two_ranks_end_with_identical_weights(ddp_run):
    rank0, rank1 = ddp_run["ranks"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert "find_unused_parameters" not in ddp_run["log"]
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key
    initial, final = rank0["initial"], rank0["state_dict"]
    frozen_bn = "backbone.bn1.running_mean"  # stem BatchNorm: frozen, held in eval mode
    trained_bn = "backbone.layer4.1.bn2.running_mean"
    assert torch.equal(initial["backbone.conv1.weight"], final["backbone.conv1.weight"])
    assert torch.equal(initial[frozen_bn], final[frozen_bn])
    assert not torch.equal(initial["backbone.layer4.1.conv2.weight"], final["backbone.layer4.1.conv2.weight"])
    assert not torch.equal(initial[trained_bn], final[trained_bn])


def test_one_checkpoint_folder_written_once(ddp_run):
    runs = ddp_run["tmp"] / "runs" / "run"
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # rank 1 made no logger folder of its own
    names = sorted(p.name for p in (runs / "version_0" / "checkpoints").iterdir())
    assert (
        len(names) == 3 and names[0] == "best.ckpt" and names[2] == "last.ckpt" and names[1].startswith("epoch00-")
    )  # no temporaries left
    ckpt = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    rank0 = ddp_run["ranks"][0]["state_dict"]
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in rank0.items())


def test_validation_metrics_equal_one_process_run(ddp_run, capsys):
    rank0, rank1 = ddp_run["ranks"]
    # Each of the 9 validation samples seen exactly once (DistributedSampler would pad to 10).
    assert sorted(rank0["val_indices"] + rank1["val_indices"]) == list(range(9))
    assert rank0["metrics"] == rank1["metrics"]  # synced across ranks
    ckpt = ddp_run["tmp"] / "runs/run/version_0/checkpoints/last.ckpt"
    cli = build_cli(
        [
            "validate",
            "--config",
            str(ddp_run["config"]),
            "--ckpt_path",
            str(ckpt),
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(ddp_run["tmp"] / "validate"),
        ]
    )
    single = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert single["val/acc"] == rank0["metrics"]["val/acc"]
    assert single["val/f1"] == rank0["metrics"]["val/f1"]
    assert single["val/loss"] == pytest.approx(rank0["metrics"]["val/loss"], rel=1e-6)  # sums added in another order

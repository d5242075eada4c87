"""Two "nodes" of one process each on localhost (torchrun ``--nnodes 2 --node_rank 0/1``, gloo) over streamed shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_see_each_training_sample_once_per_epoch_and_end_with_the_same_weights(class_shards: Path, tmp_path: Path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith(("SLURM_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_"))]:
        env.pop(key)  # Lightning must find torchrun's variables, not a surrounding job's
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(HERE / "multinode_run.py"),
                str(class_shards),
                str(tmp_path),
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n----\n".join(out[-3000:] for out in outputs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["global_rank"], r["node_rank"], r["world_size"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]
    assert ranks[0]["cluster"] == "TorchElasticEnvironment"
    for epoch in ("0", "1"):
        train = ranks[0]["train"][epoch] + ranks[1]["train"][epoch]
        assert sorted(train) == list(range(24)), f"epoch {epoch}: a training sample was repeated or missed across the nodes"
        assert set(ranks[0]["train"][epoch]).isdisjoint(ranks[1]["train"][epoch])
        val = ranks[0]["val"][epoch] + ranks[1]["val"][epoch]
        assert sorted(val) == list(range(8)), f"epoch {epoch}: validation counted a sample twice or not at all"
    assert ranks[0]["train"]["0"] != ranks[0]["train"]["1"]  # shuffled anew each epoch
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_multinode_config_sets_nodes_and_ddp(capsys):
    import yaml

    from lit_finetune.cli import build_cli

    configs = ROOT / "configs"
    with pytest.raises(SystemExit) as done:
        build_cli(["fit", "--config", str(configs / "quickstart.yaml"), "--config", str(configs / "multinode.yaml"), "--print_config"])
    assert done.value.code == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["num_nodes"] == 2 and trainer["devices"] == 4
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"

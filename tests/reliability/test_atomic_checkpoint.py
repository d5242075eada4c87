"""Point 2: a process killed while writing a checkpoint leaves the previous file loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from reliability_helpers import subprocess_env

from lit_finetune.cli import build_cli
from lit_finetune.models.weights import AtomicCheckpointIO, atomic_save

WRITER = textwrap.dedent(
    """
    import sys, torch
    from lit_finetune.models.weights import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    checkpoint = {"step": 1, "weights": torch.ones(64 * 1024 * 1024 // 4)}  # 64 MB: a write takes a while
    while True:
        io.save_checkpoint(checkpoint, sys.argv[1])
    """
)


def test_killed_writer_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    previous = {"step": 0, "weights": torch.arange(10.0)}
    AtomicCheckpointIO().save_checkpoint(previous, path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=subprocess_env())
    temporary = tmp_path / f".last.ckpt.{writer.pid}.tmp"
    try:
        deadline = time.monotonic() + 60
        while not (temporary.exists() and temporary.stat().st_size > 0):  # the writer is mid-write
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.001)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    loaded = torch.load(path, weights_only=True)
    # Either the previous checkpoint or a complete new one, never a torn file.
    if loaded["step"] == 0:
        assert torch.equal(loaded["weights"], previous["weights"])
    else:
        assert loaded["step"] == 1 and loaded["weights"].numel() == 64 * 1024 * 1024 // 4
    assert temporary.exists()  # the killed writer's partial file ...
    atomic_save({"step": 2}, path)
    assert not temporary.exists()  # ... is removed by the next save (its process is gone)
    assert torch.load(path, weights_only=True) == {"step": 2}


def test_cli_uses_atomic_checkpoint_io(tmp_path, dataset):
    cli = build_cli(["--data.root", str(dataset), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)

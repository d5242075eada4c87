"""One "node" of the 2-node test: started by torchrun; trains TinyModel on streamed shards and writes what it saw.

Usage: torchrun --nnodes 2 --node_rank R --nproc-per-node 1 ... multinode_run.py <shards> <output folder>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from streaming_helpers import RecordSamples, TinyModel

from lit_finetune.data.streaming import StreamingDataModule


class ValRecorder(TinyModel):
    def on_validation_epoch_start(self) -> None:
        self.val_indices = []

    def on_validation_epoch_end(self) -> None:
        self.val_by_epoch[self.current_epoch] = list(self.val_indices)

    val_by_epoch: dict[int, list[int]]


def main(shards: str, output: str) -> None:
    seed_everything(0)
    recorder = RecordSamples()
    model = ValRecorder()
    model.val_by_epoch = {}
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=StreamingDataModule(shards, batch_size=4, num_workers=0, image_size=32, resize_size=32))
    result = {
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "node_rank": trainer.node_rank,
        "cluster": type(trainer.strategy.cluster_environment).__name__,
        "train": {epoch: recorder.epoch(epoch) for epoch in range(2)},
        "val": model.val_by_epoch,
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
        "steps": trainer.global_step,
    }
    Path(output, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    assert torch.distributed.is_initialized()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""``SegmentationDataModule`` inside a two-process ``fit`` (DDP, gloo, CPU): validation counts each sample once.

Seven validation images split 4/3 over the ranks: Lightning's default ``DistributedSampler`` would pad the short
rank by repeating a sample (counting it twice); the data module gives each process its own samples with Lightning's
``UnrepeatedDistributedSampler``. The validation metrics of the two processes equal those of one process that
validates the same images with the weights the two-process fit ended with.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from seg_data_helpers import write_split_root
from seg_model_helpers import tiny_module

from lit_finetune import SegmentationDataModule

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).parent
VAL, BATCH = 7, 2

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    from lightning.pytorch import Callback, Trainer, seed_everything
    from seg_model_helpers import tiny_module
    from lit_finetune import SegmentationDataModule


    class SeenIndices(Callback):
        def __init__(self):
            self.indices = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.indices.extend(batch["index"].tolist())


    if __name__ == "__main__":
        out = Path({out!r})
        seed_everything(0, verbose=False)
        seen = SeenIndices()
        trainer = Trainer(
            strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[seen],
        )
        data = SegmentationDataModule({root!r}, batch_size={batch}, num_workers=0, image_size=32, num_classes=3)
        model = tiny_module(lr=0.05)
        trainer.fit(model, datamodule=data)
        metrics = {{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
        if trainer.global_rank == 0:
            torch.save(model.state_dict(), out / "weights.pt")
        result = dict(metrics=metrics, indices=seen.indices, world_size=trainer.world_size)
        (out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("seg_ddp")
    root = write_split_root(tmp / "data", num_classes=3, train=4, val=VAL)
    script = tmp / "seg_ddp_run.py"
    script.write_text(SCRIPT.format(here=str(HERE), out=str(tmp), root=str(root), batch=BATCH))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    model = tiny_module()
    model.load_state_dict(torch.load(tmp / "weights.pt", weights_only=True))
    return {"ranks": ranks, "model": model, "root": root}


def test_each_sample_is_validated_once_an_epoch_over_two_ranks(ddp_result):
    rank0, rank1 = ddp_result["ranks"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    # Two epochs: each rank sees its share twice; over both ranks, each of the 7 images once an epoch.
    assert len(rank0["indices"]) == 2 * 4 and len(rank1["indices"]) == 2 * 3  # uneven, nothing padded
    assert sorted(rank0["indices"] + rank1["indices"]) == sorted(list(range(VAL)) * 2)


def test_two_process_metrics_equal_one_process_metrics(ddp_result):
    rank0, rank1 = ddp_result["ranks"]
    assert rank0["metrics"] == rank1["metrics"]  # synced: both ranks hold the global values
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    data = SegmentationDataModule(str(ddp_result["root"]), batch_size=BATCH, num_workers=0, image_size=32, num_classes=3)
    trainer.validate(ddp_result["model"], datamodule=data, verbose=False)
    single = {k: float(v) for k, v in trainer.callback_metrics.items()}
    names = {"val/miou", "val/dice", "val/pixel_acc", "val/loss"}
    assert names <= set(single) and set(rank0["metrics"]) == set(single)
    for name in sorted(single):
        assert rank0["metrics"][name] == pytest.approx(single[name], rel=1e-5, abs=1e-6), name

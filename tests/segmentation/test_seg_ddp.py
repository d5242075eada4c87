"""``SegmentationModule.validate`` on two CPU processes (DDP, gloo) gives the metrics of one process on the same data.

Seven samples split 4/3 over the ranks: Lightning's default ``DistributedSampler`` would pad the short rank by
repeating a sample (counting it twice), so the loaders use Lightning's ``UnrepeatedDistributedSampler``, as
``SegmentationDataModule`` does, with ``use_distributed_sampler=False``. Each sample is seen exactly once.
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
from seg_model_helpers import ShapesDataset, loader, tiny_module
from torch.utils.data import Subset

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).parent
SAMPLES, BATCH = 7, 2

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader
    from seg_model_helpers import ShapesDataset, tiny_module


    class SeenIndices(Callback):
        def __init__(self):
            self.indices = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.indices.extend(batch["index"].tolist())


    if __name__ == "__main__":
        out = Path({out!r})
        seen = SeenIndices()
        trainer = Trainer(
            strategy="ddp", accelerator="cpu", devices=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, callbacks=[seen],
        )
        model = tiny_module()
        model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
        dataset = ShapesDataset({samples}, 32, seed=3)
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        trainer.validate(model, DataLoader(dataset, batch_size={batch}, sampler=sampler, num_workers=0), verbose=False)
        metrics = {{k: float(v) for k, v in trainer.callback_metrics.items()}}
        result = dict(metrics=metrics, indices=seen.indices, world_size=trainer.world_size)
        (out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps(result))
    """
)


def validate_one_process(model, dataset) -> dict[str, float]:
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, loader(dataset, batch_size=BATCH), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("seg_ddp")
    model = tiny_module()
    # A few steps of training, so that every class is predicted somewhere and has an IoU between 0 and 1.
    trainer = Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, loader(ShapesDataset(8, 32), batch_size=4, shuffle=True))
    torch.save(model.state_dict(), tmp / "weights.pt")
    script = tmp / "seg_ddp_run.py"
    script.write_text(SCRIPT.format(here=str(HERE), out=str(tmp), samples=SAMPLES, batch=BATCH))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"ranks": ranks, "model": model}


def test_each_sample_is_validated_once_over_two_ranks(ddp_result):
    rank0, rank1 = ddp_result["ranks"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert sorted(rank0["indices"]) == [0, 2, 4, 6] and sorted(rank1["indices"]) == [1, 3, 5]  # uneven, nothing repeated


def test_two_process_metrics_equal_one_process_metrics(ddp_result):
    rank0, rank1 = ddp_result["ranks"]
    assert rank0["metrics"] == rank1["metrics"]  # synced: both ranks hold the global values
    dataset = ShapesDataset(SAMPLES, 32, seed=3)
    assert (dataset.masks == 255).any()  # ignore pixels take part
    single = validate_one_process(ddp_result["model"].eval(), dataset)
    names = {"val/miou", "val/dice", "val/pixel_acc", "val/loss"}
    per_class = {k for k in single if k.startswith("val/iou/")}
    assert names <= set(single) and len(per_class) == 3
    assert set(rank0["metrics"]) == set(single)
    assert all(0.05 < single[name] < 0.95 for name in per_class)  # every class predicted, none perfectly
    for name in sorted(names | per_class):
        assert rank0["metrics"][name] == pytest.approx(single[name], rel=1e-5, abs=1e-6), name
    # What rank 0 saw alone scores otherwise: the equality above needs the other rank's pixels.
    alone = validate_one_process(ddp_result["model"].eval(), Subset(dataset, [0, 2, 4, 6]))
    assert any(alone[name] != pytest.approx(single[name], rel=1e-2) for name in per_class)

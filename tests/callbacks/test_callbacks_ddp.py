"""All diagnostics callbacks in a two-process CPU DDP run (gloo): it finishes, and each image is logged once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HERE = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    from callback_helpers import make_datamodule, make_model, make_trainer, make_image_folder
    from lit_finetune import keys
    from lit_finetune.callbacks.best_worst import BestWorstSamples
    from lit_finetune.callbacks.classification_report import ValidationReport
    from lit_finetune.callbacks.data_timing import DataTiming
    from lit_finetune.callbacks.gradcam import GradCAM
    from lit_finetune.callbacks.gradient_stats import GradientStats
    from lit_finetune.callbacks.hparams import HParamsSummary
    from lit_finetune.callbacks.nan_guard import NanGuard

    if __name__ == "__main__":
        out = Path({out!r})
        root = out / "images"
        best_worst = BestWorstSamples(k=3, tile_size=32)
        gradcam = GradCAM(num_images=4, tile_size=32)
        callbacks = [best_worst, GradientStats(), NanGuard(), gradcam, ValidationReport(), DataTiming(), HParamsSummary()]
        trainer = make_trainer(out, callbacks, strategy="ddp", devices=2, max_epochs=1)
        if trainer.global_rank == 0 and not root.exists():
            make_image_folder(root, {{"train": 8, "val": 4}})
        trainer.strategy.barrier()
        model = make_model()
        datamodule = make_datamodule(root, batch_size=4)
        trainer.fit(model, datamodule=datamodule)
        if trainer.global_rank == 0:
            model.eval()
            with torch.no_grad():
                samples = [datamodule.val_set[i] for i in range(len(datamodule.val_set))]
                images = torch.stack([s[keys.IMAGE] for s in samples])
                targets = torch.tensor([int(s[keys.TARGET]) for s in samples])
                losses = model.sample_losses(model(images), targets)
            selected = best_worst.selected["val"]
            result = dict(log_dir=trainer.logger.log_dir, losses=losses.tolist(), selected=selected, steps=trainer.global_step)
            (out / "result.json").write_text(json.dumps(result))
    """
)


def test_ddp_two_processes(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(here=str(HERE), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 3  # 24 images, 2 ranks, 4 per batch

    log_dir = Path(result["log_dir"])
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1  # rank 1 wrote nothing
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    images = [f"zz-best_worst/{stage}/{kind}" for stage in ("train", "val") for kind in ("worst", "best")]
    images += ["zz-gradcam/val", "zz-report/confusion_matrix"]
    for tag in images:
        assert len(acc.Images(tag)) == 1, tag

    # The val candidates of both ranks were gathered: the picks are the global extremes.
    losses = result["losses"]
    worst = [i for i, _ in result["selected"]["worst"]]
    best = [i for i, _ in result["selected"]["best"]]
    assert min(losses[i] for i in worst) >= sorted(losses)[-3] - 1e-5
    assert max(losses[i] for i in best) <= sorted(losses)[2] + 1e-5
    assert len(set(worst)) == 3 and len(set(best)) == 3

"""The classification metrics of two CPU processes (DDP, gloo), each validating half of the planted samples, equal
scikit-learn's values over all of them: the metric states are reduced across the ranks, not averaged per rank."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from planted_logits import reference_metrics

HERE = Path(__file__).parent
TASKS = ("binary", "multiclass", "multilabel")

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from pathlib import Path
    from lightning.pytorch import Trainer
    from planted_logits import loader, planted_module

    if __name__ == "__main__":
        results = {{}}
        for task in {tasks!r}:
            trainer = Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False)
            # 16 samples: 8 a rank (Lightning's DistributedSampler, rank r takes samples r, r + 2, ...), 2 batches of 4 each.
            trainer.validate(planted_module(task), loader(task), verbose=False)
            results[task] = {{k: float(v) for k, v in trainer.callback_metrics.items()}}
        Path({out!r}, f"rank{{trainer.global_rank}}.json").write_text(json.dumps(results))
    """
)


@pytest.mark.filterwarnings("ignore:No positive")
def test_two_processes_log_the_values_of_all_samples(tmp_path: Path) -> None:
    script = tmp_path / "ddp_metrics.py"
    script.write_text(SCRIPT.format(here=str(HERE), out=str(tmp_path), tasks=TASKS))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for task in TASKS:
            expected = reference_metrics(task, "val")
            assert set(results[task]) == set(expected), task
            for name, value in expected.items():
                assert results[task][name] == pytest.approx(value, abs=1e-5), (rank, task, name)

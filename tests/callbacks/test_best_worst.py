"""BestWorstSamples: the logged tiles are the samples with the truly highest and lowest losses."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from callback_helpers import decode_image, text_of, val_losses

from lit_finetune import keys
from lit_finetune.callbacks._images import denormalize
from lit_finetune.callbacks.best_worst import BestWorstSamples, _RunningTopK


def _logged_indices(text: str, kind: str) -> list[int]:
    line = next(line for line in text.splitlines() if line.startswith(f"{kind}:"))
    return [int(i) for i in re.findall(r"(\d+) \(", line)]


@pytest.mark.parametrize("kind", ["worst", "best"])
def test_val_grid_holds_the_true_extreme_losses(full_run, kind):
    losses, _, _ = val_losses(full_run)
    assert len(set(losses.round(decimals=4).tolist())) > 4, "degenerate losses would make the check meaningless"
    (text,) = text_of(full_run.events, "zz-best_worst/val/indices")
    chosen = _logged_indices(text, kind)
    k = full_run.callbacks["best_worst"].k
    assert len(chosen) == k and len(set(chosen)) == k
    order = losses.argsort(descending=(kind == "worst"))
    expected = order[:k].tolist()
    # Same losses as the brute-force top-k (ties may swap equal samples), in the same order.
    torch.testing.assert_close(losses[chosen], losses[expected], rtol=1e-4, atol=1e-5)
    logged_scores = [s for _, s in full_run.callbacks["best_worst"].selected["val"][kind]]
    torch.testing.assert_close(torch.tensor(logged_scores), losses[chosen], rtol=1e-4, atol=1e-5)


def test_tiles_show_the_chosen_images(full_run):
    (event,) = full_run.events.Images("zz-best_worst/val/worst")
    grid = decode_image(event)
    (text,) = text_of(full_run.events, "zz-best_worst/val/indices")
    chosen = _logged_indices(text, "worst")
    model = full_run.model
    for col, index in enumerate(chosen):
        x = 2 + col * 34  # 32-px tiles, 2-px border
        tile = grid[2:34, x : x + 32].astype(float)
        image = full_run.datamodule.val_set[index][keys.IMAGE].unsqueeze(0)
        expected = denormalize(image, model.image_mean, model.image_std)[0].permute(1, 2, 0).numpy() * 255
        assert np.abs(tile - expected).max() <= 2, f"tile {col} is not dataset image {index}"
    assert grid.shape[1] == 2 + 3 * 34  # k=3 tiles in one row, nothing more


def test_train_grids_logged_once(full_run):
    for kind in ("worst", "best"):
        (event,) = full_run.events.Images(f"zz-best_worst/train/{kind}")
        assert event.width == 2 + 3 * 34
    selected = full_run.callbacks["best_worst"].selected["train"]
    assert len({i for i, _ in selected["worst"]}) == 3
    assert max(s for _, s in selected["best"]) <= min(s for _, s in selected["worst"])


def test_running_topk_matches_sort_across_batches_and_nan():
    torch.manual_seed(0)
    scores = torch.randn(50)
    scores[7] = float("nan")
    worst, best = _RunningTopK(5, largest=True), _RunningTopK(5, largest=False)
    for start in range(0, 50, 8):
        chunk = scores[start : start + 8]
        for top in (worst, best):
            top.update(chunk, lambda pos, s=start: {keys.INDEX: pos + s})
    finite = scores.nan_to_num(nan=float("inf"))
    assert worst.state[keys.INDEX].tolist() == finite.argsort(descending=True)[:5].tolist()  # NaN first among the worst
    assert best.state[keys.INDEX].tolist() == scores.nan_to_num(nan=float("inf")).argsort()[:5].tolist()


def test_nonfinite_batch_captured(tmp_path, image_root):
    from callback_helpers import make_datamodule, make_model, make_trainer, read_events

    def score(outputs):  # poison the second validation batch
        s = outputs["sample_loss"].clone()
        if int(outputs[keys.INDEX].min()) >= 8:
            s[0] = float("nan")
        return s

    cb = BestWorstSamples(k=2, stages=["val"], score_fn=score, tile_size=32)
    trainer = make_trainer(tmp_path, [cb], limit_train_batches=1)
    trainer.fit(make_model(), datamodule=make_datamodule(image_root))
    acc = read_events(trainer)
    assert len(acc.Images("zz-best_worst/val/nonfinite")) == 1
    (text,) = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("zz-best_worst/val/nonfinite/text_summary")]
    assert "batch 1" in text and "[8]" in text
    assert cb.selected["val"]["worst"][0][0] == 8  # NaN ranks first among the worst


def test_validation():
    with pytest.raises(ValueError, match="`k` must be between 1 and 32.*got 0"):
        BestWorstSamples(k=0)
    with pytest.raises(ValueError, match="stages.*'test'"):
        BestWorstSamples(stages=["test"])

"""RNGStateCheckpoint under DDP: every rank's generator states are saved, and each rank gets its own back."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_finetune.callbacks.rng_state import RNGStateCheckpoint


def _draws() -> list[float]:
    return [*torch.rand(3).tolist(), float(np.random.rand()), random.random()]


def _save_then_resume(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)
        np.random.seed(200 + rank)
        random.seed(300 + rank)
        callback = RNGStateCheckpoint()
        state = callback.state_dict()
        expected = _draws()  # what this rank draws right after the checkpoint
        if rank == 0:
            torch.save(state, f"{folder}/rng.pt")
        dist.barrier()
        torch.manual_seed(0), np.random.seed(0), random.seed(0)  # a fresh process: the same seed on every rank
        callback.load_state_dict(torch.load(f"{folder}/rng.pt", weights_only=True))
        torch.save({"expected": expected, "resumed": _draws()}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_each_rank_resumes_its_own_generators(tmp_path):
    mp.spawn(_save_then_resume, args=(str(tmp_path),), nprocs=2, join=True)
    saved = torch.load(tmp_path / "rng.pt", weights_only=True)
    assert len(saved["per_rank"]) == 2
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for result in ranks:
        assert result["resumed"] == result["expected"]
    assert ranks[0]["expected"] != ranks[1]["expected"]  # the ranks' streams differ: rank 1 did not get rank 0's


def test_checkpoint_of_another_world_size_restores_rank_zero_with_a_warning():
    torch.manual_seed(1)
    callback = RNGStateCheckpoint()
    rank0 = callback.state_dict()["per_rank"][0]
    expected = _draws()
    torch.manual_seed(2)
    other = callback.state_dict()["per_rank"][0]
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="states of 2 process"):
        callback.load_state_dict({"per_rank": [rank0, other]})
    assert _draws() == expected


def test_checkpoint_without_per_rank_states_still_restores():
    torch.manual_seed(4)
    from lit_finetune.callbacks.rng_state import collect_rng_states

    old_format = collect_rng_states()
    expected = _draws()
    RNGStateCheckpoint().load_state_dict(old_format)
    assert _draws() == expected

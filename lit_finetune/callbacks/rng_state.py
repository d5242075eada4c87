"""Keep the random-number generators in checkpoints, so a resumed run draws what the full run drew.

Lightning checkpoints hold the weights, the optimizer, the schedulers and the loop counters but not the
states of the random generators (``torch``, ``numpy``, ``random``). Without them a resumed run shuffles
its data, seeds its dataloader workers and augments its images differently from an uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override


def collect_rng_states() -> dict[str, Any]:
    """The states of ``torch`` (CPU and CUDA), ``numpy`` and ``random`` as plain data (loadable with ``weights_only=True``)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()  # the legacy tuple (a dict only with legacy=False)
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(key.astype(np.int64)),  # type: ignore[attr-defined]  # the legacy tuple holds an array
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states returned by :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_and_world_size() -> tuple[int, int]:
    """This process's global rank and the number of processes (``(0, 1)`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rng_states() -> list[dict[str, Any]]:
    """Every process's :func:`collect_rng_states`, indexed by global rank (a collective under DDP)."""
    own = collect_rng_states()
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return [own]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, own)
    return gathered


def restore_own_rng_states(per_rank: list[dict[str, Any]]) -> None:
    """Restore this process's entry of :func:`gather_rng_states`.

    A checkpoint written by another number of processes cannot give each process its own stream back:
    rank 0 restores rank 0's states, the other processes keep their own (seeded) generators, and a
    warning says the run is not an exact continuation.
    """
    rank, world_size = rank_and_world_size()
    if len(per_rank) == world_size:
        set_rng_states(per_rank[rank])
        return
    rank_zero_warn(
        f"The checkpoint holds the random-generator states of {len(per_rank)} process(es), this run has {world_size}: "
        "rank 0 restores rank 0's states, the other processes keep their own, so shuffling and augmentations "
        "differ from an uninterrupted run."
    )
    if rank == 0:
        set_rng_states(per_rank[0])


class RNGStateCheckpoint(Callback):
    """Save the random generators' states in every checkpoint and restore them when training resumes.

    The states are taken when the checkpoint is written (after validation at the end of an epoch) and
    put back when the checkpoint is restored, before the first epoch's dataloader iterator is created
    (the sanity check runs with its own, isolated generator states). Together with ``seed_everything(..., workers=True)`` this makes
    ``fit`` for N epochs and ``fit`` for k epochs plus a resume to N give the same weights, shuffling and
    augmentations. Under DDP the states of every process are gathered into the checkpoint (a list
    indexed by global rank) and each process restores its own, so each keeps its own augmentation
    stream; a checkpoint of another world size restores rank 0's states on rank 0 only, with a warning.

    The ``lit-finetune`` command adds it by default (``--rng_state``).

    Example::

        trainer = Trainer(callbacks=[RNGStateCheckpoint()], deterministic=True)
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        # Called on every rank while a checkpoint is assembled, so the gather is matched on all ranks.
        return {"per_rank": gather_rng_states()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Callbacks are restored just before training starts; nothing between here and the first
        # epoch's dataloader iterator draws random numbers (Lightning isolates the sanity check's).
        # Checkpoints written before the states were kept per rank hold one process's states.
        restore_own_rng_states(state_dict["per_rank"] if "per_rank" in state_dict else [state_dict])

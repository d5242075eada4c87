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
from lightning.pytorch import Callback
from typing_extensions import override


def collect_rng_states() -> dict[str, Any]:
    """The states of ``torch`` (CPU and CUDA), ``numpy`` and ``random`` as plain data (loadable with ``weights_only=True``)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
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


class RNGStateCheckpoint(Callback):
    """Save the random generators' states in every checkpoint and restore them when training resumes.

    The states are taken when the checkpoint is written (after validation at the end of an epoch) and
    put back when the checkpoint is restored, before the first epoch's dataloader iterator is created
    (the sanity check runs with its own, isolated generator states). Together with ``seed_everything(..., workers=True)`` this makes
    ``fit`` for N epochs and ``fit`` for k epochs plus a resume to N give the same weights, shuffling and
    augmentations. Under DDP the checkpoint holds rank 0's states (``DistributedSampler`` shuffles with
    ``seed + epoch`` and does not depend on them).

    The ``lit-finetune`` command adds it by default (``--rng_state``).

    Example::

        trainer = Trainer(callbacks=[RNGStateCheckpoint()], deterministic=True)
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Callbacks are restored just before training starts; nothing between here and the first
        # epoch's dataloader iterator draws random numbers (Lightning isolates the sanity check's).
        set_rng_states(state_dict)

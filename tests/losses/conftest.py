"""Run the loss tests on one intra-op thread.

The tensors here are tiny; on a busy two-core machine torch's parallel softmax kernels spend
milliseconds per call synchronising threads, which made gradcheck ten times slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Cache of pooled backbone features by dataset index, for linear probing on a frozen backbone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class FeatureCache:
    """Pooled backbone features by dataset index, computed on first sight (linear probing).

    Valid only while the backbone is frozen and the transforms are deterministic: the owner checks
    :meth:`verify` once on a batch seen before.

    Example::

        >>> cache = FeatureCache()
        >>> index = torch.tensor([3, 0])
        >>> cache.lookup(index, lambda missing: torch.ones(int(missing.sum()), 2)).shape
        torch.Size([2, 2])
        >>> cache.lookup(index, lambda missing: 1 / 0).sum().item()  # no second computation
        4.0
    """

    def __init__(self) -> None:
        self.features: Tensor | None = None
        self.filled: Tensor | None = None
        self.verified = False

    def clear(self) -> None:
        """Forget every cached feature."""
        self.features, self.filled, self.verified = None, None, False

    def __len__(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def _reserve(self, size: int, like: Tensor) -> None:
        if self.features is None or self.filled is None:
            self.features = like.new_empty((size, *like.shape[1:]))
            self.filled = torch.zeros(size, dtype=torch.bool, device=like.device)
        elif size > len(self.features):
            grown = self.features.new_empty((max(size, 2 * len(self.features)), *self.features.shape[1:]))
            grown[: len(self.features)] = self.features
            filled = torch.zeros(len(grown), dtype=torch.bool, device=self.filled.device)
            filled[: len(self.filled)] = self.filled
            self.features, self.filled = grown, filled

    def is_cached(self, index: Tensor) -> Tensor:
        """Boolean mask of the samples of ``index`` that are in the cache."""
        if self.filled is None:
            return torch.zeros(len(index), dtype=torch.bool, device=index.device)
        known = index < len(self.filled)
        known[known.clone()] = self.filled[index[known]]
        return known

    def lookup(self, index: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Features of the samples ``index``; ``compute(missing_mask)`` gives those not cached yet."""
        missing = ~self.is_cached(index)
        if missing.any():
            new = compute(missing)
            self._reserve(int(index.max()) + 1, new)
            assert self.features is not None and self.filled is not None  # _reserve allocated them
            self.features[index[missing]] = new
            self.filled[index[missing]] = True
        assert self.features is not None  # every sample of `index` is cached now
        return self.features[index]

    def verify(self, index: Tensor, features: Tensor, rtol: float = 1e-3, atol: float = 1e-4) -> None:
        """Check freshly computed ``features`` against the cache (once).

        Raises:
            RuntimeError: If they differ: the transforms are random or the backbone changed.
        """
        assert self.features is not None  # checked samples are cached
        cached = self.features[index]
        if not torch.allclose(cached.float(), features.float(), rtol=rtol, atol=atol):
            worst = (cached.float() - features.float()).abs().max().item()
            raise RuntimeError(
                f"cache_features: the features of samples {index[:4].tolist()} changed since they were cached "
                f"(max difference {worst:.3g}). Caching needs deterministic train/val transforms (no random "
                "augmentation) and a frozen backbone; turn augmentation off or set cache_features=False."
            )
        self.verified = True

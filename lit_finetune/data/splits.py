"""Seeded splits: the one helper behind validation hold-outs and ``train_fraction`` subsets."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")


def seeded_split(
    items: Sequence[Item], fraction: float, seed: int, group: Callable[[Item], Hashable] | None = None, keep_single: bool = False
) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into ``(chosen, rest)``: ``fraction`` of each group (at least one), chosen with ``seed``.

    Groups (``group(item)``; None: all items form one) are visited in sorted order and each, sorted, is shuffled
    by one ``random.Random(seed)``: a split depends only on the items and the seed, not on their order. Both lists
    come back sorted.

    Args:
        items: the items to split (sortable, e.g. ``(path, target)`` tuples).
        fraction: the share of each group that is chosen.
        seed: the seed of the shuffle.
        group: the group of an item (its class, for a stratified split); None: no groups.
        keep_single: a group of one item stays whole in ``rest`` (a class's only image is not held out).

    Example::

        val, train = seeded_split(samples, 0.2, seed=0, group=lambda s: s[1], keep_single=True)
    """
    groups: dict[Any, list[Item]] = {}
    for item in items:
        groups.setdefault(group(item) if group else None, []).append(item)
    rng = random.Random(seed)
    chosen: list[Item] = []
    rest: list[Item] = []
    for key in sorted(groups, key=lambda k: (k is not None, k)):
        members = sorted(groups[key])  # type: ignore[type-var]
        rng.shuffle(members)
        n = 0 if keep_single and len(members) < 2 else max(1, round(len(members) * fraction))
        chosen.extend(members[:n])
        rest.extend(members[n:])
    return sorted(chosen), sorted(rest)  # type: ignore[type-var]

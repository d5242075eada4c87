"""The mask check's scan, kept between runs: each pair is read again only when one of its files changed.

:func:`cached_scan` inspects every image/mask pair (the mask decoded for its values, the image decoded to find
truncated or corrupt files, both sizes compared) and keeps the results of usable pairs in a JSON file keyed by
the paths and each file's size and modification time. A second ``fit`` on the same data reads only file
metadata; a changed, added or replaced file is scanned again. Pairs that failed are never cached.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lit_finetune.data.check import check_image, map_in_threads
from lit_finetune.data.masks import MaskInfo, inspect_pair

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def file_signature(image: str, mask: str) -> list[int]:
    """Size and modification time (ns) of both files of a pair."""
    a, b = os.stat(image), os.stat(mask)
    return [a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns]


def inspect_decoded(pair: tuple[str, str]) -> MaskInfo:
    """:func:`inspect_pair`, plus a full decode of the image (a truncated image is an error here, not mid-epoch)."""
    info = inspect_pair(*pair)
    if info.error is None and (reason := check_image(pair[0])) is not None:
        return MaskInfo(info.mask, error=f"image '{pair[0]}' cannot be read: {reason}")
    return info


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("pairs", {}) if data.get("version") == CACHE_VERSION else {}


def _save(path: Path, entries: dict) -> None:
    """Write atomically; a folder that cannot be written (read-only data) only costs the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump({"version": CACHE_VERSION, "pairs": entries}, handle)
        os.replace(handle.name, path)
    except OSError as err:
        log.info("Mask scan results not cached in %s: %s", path, err)


def cached_scan(pairs: Sequence[tuple[str, str]], cache: str | Path | None, num_threads: int | None = None) -> list[MaskInfo]:
    """:func:`inspect_decoded` for every pair, reusing the results in ``cache`` of pairs whose files did not change.

    Args:
        pairs: ``(image, mask)`` files.
        cache: the JSON file of earlier results (rewritten with these); None: no cache.
        num_threads: threads that decode files; None: ``min(16, cpu count + 4)``.
    """
    stored = _load(Path(cache)) if cache is not None else {}
    keys = [f"{image}|{mask}" for image, mask in pairs]
    signatures = map_in_threads(lambda pair: file_signature(*pair), pairs, num_threads, chunksize=256)
    infos: list[MaskInfo | None] = []
    for key, signature in zip(keys, signatures, strict=False):
        entry = stored.get(key)
        fresh = entry is not None and entry["signature"] == signature
        infos.append(
            MaskInfo(key.split("|", 1)[1], tuple(entry["values"]), tuple(entry["counts"])) if fresh and entry is not None else None
        )
    todo = [i for i, info in enumerate(infos) if info is None]
    for i, info in zip(todo, map_in_threads(inspect_decoded, [pairs[i] for i in todo], num_threads, chunksize=32), strict=False):
        infos[i] = info
    if cache is not None and todo:
        entries = {
            key: {"signature": sig, "values": list(info.values), "counts": list(info.counts)}
            for key, sig, info in zip(keys, signatures, infos, strict=False)
            if info is not None and info.error is None
        }
        _save(Path(cache), entries)
    log.info("Mask scan: %d of %d pairs read (the others unchanged since the cached scan)", len(todo), len(pairs))
    return [info for info in infos if info is not None]

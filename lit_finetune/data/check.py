"""Find unreadable images before training: ``lit-finetune check-data <folder>``.

Every file with an image extension is opened and decoded the way training reads it (JPEGs at a reduced
scale, which still reads the whole file), in a thread pool. Zero-byte files, truncated or corrupt JPEG
and PNG data, and other files with image extensions are reported with the reason; grayscale, 16-bit,
palette, RGBA, CMYK and EXIF-rotated images are fine (they are converted to RGB when read).
``ClassificationDataModule`` runs the same scan at set-up and then skips the bad files or stops the run
(``data.bad_images``). The helpers shared with the mask checks of :mod:`lit_finetune.data.masks` (thread pool,
one scan for all DDP processes, reports that count and list) live here too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from lit_finetune.data.folder import list_images, load_rgb

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

SCAN_SIDE = 64
"""JPEGs are decoded at a scale giving at least this many pixels a side."""

T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(function: Callable[[T], R], items: Iterable[T], num_threads: int | None = None, chunksize: int = 1) -> list[R]:
    """``function`` on every item, in order, in a thread pool: for decoding files (which releases the GIL).

    Args:
        function: called on each item.
        items: the inputs.
        num_threads: threads; None: ``min(16, cpu count + 4)``.
        chunksize: items handed to the pool at a time.
    """
    threads = num_threads or min(16, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(function, items, chunksize=chunksize))


def scan_once(scan: Callable[[], R], trainer: Trainer | None = None) -> R:
    """``scan()`` on global rank 0 only, its result broadcast to the other processes; here with one process.

    For scans whose result is the same on every process (they list the same files): one scan serves all.

    Args:
        scan: computes the result (on rank 0).
        trainer: the trainer the data module is attached to; None (or one process): scan here.
    """
    if trainer is None or trainer.world_size <= 1:
        return scan()
    return cast(R, trainer.strategy.broadcast(scan() if trainer.global_rank == 0 else None, src=0))  # rank 0 sends its result


def format_problems(title: str, lines: Sequence[str], limit: int = 20) -> str:
    """``title`` with the count, then the first ``limit`` lines indented, then how many more."""
    text = [f"{len(lines)} {title}:"] + [f"  {line}" for line in lines[:limit]]
    if len(lines) > limit:
        text.append(f"  ... and {len(lines) - limit} more")
    return "\n".join(text)


@dataclass(frozen=True)
class BadImage:
    """An image file that cannot be used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_image(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an RGB image, or None when it can."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        load_rgb(str(path), max_side=SCAN_SIDE)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        return f"{type(err).__name__}: {err}"
    return None


def find_bad_images(paths: Iterable[str | Path], num_threads: int | None = None) -> list[BadImage]:
    """Check every path (in a thread pool: decoding releases the GIL) and return the bad ones, in order.

    Args:
        paths: image files.
        num_threads: threads; None: ``min(16, cpu count + 4)``.

    Example::

        bad = find_bad_images(["ok.jpg", "empty.jpg"])
        [str(b) for b in bad]  # ['empty.jpg: empty file (0 bytes)']
    """
    paths = [str(p) for p in paths]
    reasons = map_in_threads(check_image, paths, num_threads, chunksize=64)
    return [BadImage(str(p), r) for p, r in zip(paths, reasons, strict=False) if r is not None]


def find_bad_images_once(paths: Sequence[str | Path], trainer: Trainer | None = None) -> list[BadImage]:
    """``find_bad_images`` on global rank 0 only, its result broadcast to the other processes.

    Every process of a DDP run indexes the same sample list (the distributed sampler splits it by
    index), so one scan serves all of them instead of each process decoding the whole data set.

    Args:
        paths: image files, the same on every process.
        trainer: the trainer the data module is attached to; None (or one process): scan here.

    Example::

        bad = find_bad_images_once(paths, datamodule.trainer)  # in LightningDataModule.setup
    """
    return scan_once(lambda: find_bad_images(paths), trainer)


def format_report(bad: Sequence[BadImage], total: int, limit: int = 50) -> str:
    """``N of M images cannot be read:`` followed by the first ``limit`` files and their reasons."""
    if not bad:
        return f"All {total} images can be read."
    return format_problems(f"of {total} images cannot be read", [str(b) for b in bad], limit)


def check_data(root: str, num_threads: int | None = None, output: str | None = None) -> list[BadImage]:
    """Scan every image under ``root`` (recursively) and print how many cannot be read, and which.

    Args:
        root: the data folder (any layout: ``train/``/``val/`` class folders or class folders directly).
        num_threads: threads that decode images; None: ``min(16, cpu count + 4)``.
        output: also write the bad files, one ``path<TAB>reason`` a line, to this file.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"'{root}' is not a folder. Give the data folder, e.g. `lit-finetune check-data data/digits`.")
    paths = list_images(folder)
    bad = find_bad_images(paths, num_threads)
    print(format_report(bad, len(paths), limit=len(bad)))
    if output:
        Path(output).write_text("".join(f"{b.path}\t{b.reason}\n" for b in bad))
    return bad


def main(args: list[str] | None = None) -> int:
    """``lit-finetune check-data ROOT [--num_threads N] [--output bad.tsv]`` (or ``--root ROOT``); exit status 1 when bad files exist."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="lit-finetune check-data",
        description="Find unreadable images (empty, truncated, corrupt, not images) under a data folder.",
    )
    parser.add_argument("root", nargs="?", help="the data folder (any layout)")
    parser.add_argument("--root", dest="root_option", metavar="ROOT", help="the data folder, as an option")
    parser.add_argument("--num_threads", type=int, default=None, help="threads that decode images (default: min(16, cpu count + 4))")
    parser.add_argument("--output", default=None, help="also write the bad files, one `path<TAB>reason` a line, to this file")
    cfg = parser.parse_args(args)
    if cfg.root and cfg.root_option and cfg.root != cfg.root_option:
        parser.error(f"two data folders given ('{cfg.root}' and --root '{cfg.root_option}'): give one.")
    root = cfg.root or cfg.root_option
    if root is None:
        parser.error("give the data folder: `lit-finetune check-data data/my_images` or `--root data/my_images`.")
    try:
        bad = check_data(root, cfg.num_threads, cfg.output)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

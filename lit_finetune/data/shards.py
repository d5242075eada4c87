"""``lit-finetune optimize``: any data set the data modules read, written as LitData shards, one output per split.

The data set is described exactly as for training (a config's ``data`` section, with the model's task linked in),
so class folders, the CSV route (multilabel too), image+mask pairs and the demos are all covered: the data module
lists the splits and checks the files (unreadable images are reported and skipped, or stop the run, as
``data.bad_images`` says, like ``lit-finetune check-data``; masks are checked as in training), then
``litdata.optimize`` writes the samples with parallel workers and a progress bar::

    <output>/train/   index.json, chunk-*.bin      a LitData dataset per split (val/, and test/ when present)
    <output>/lit_finetune.json                     kind, task, class names and counts, split sizes, palette

A sample keeps its image file's bytes as stored (no decoding, no re-encoding: no quality lost), its target
(class index, or a float32 multi-hot / binary vector), its position in the source split (``index``) and source
``path`` (UTF-8 bytes); a segmentation sample keeps its mask as PNG bytes of the class indices the model trains on
(binary masks already mapped to 0/1). ``lit_finetune.json`` is written last: its presence marks a finished output,
which a second run refuses to overwrite without ``--overwrite``.

Example::

    lit-finetune optimize --config configs/quickstart.yaml --output s3://my-bucket/digits --workers 4
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lit_finetune.data import storage
from lit_finetune.data.folder import ImageDataset
from lit_finetune.data.masks import read_mask
from lit_finetune.data.segmentation import SegmentationDataset

log = logging.getLogger(__name__)

METADATA_FILE = "lit_finetune.json"
"""Name of the metadata file at the root of an optimized output."""
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def require_litdata():
    """The ``litdata`` module.

    Raises:
        ModuleNotFoundError: LitData is not installed; the message says how to install it.
    """
    try:
        import litdata
    except ImportError as err:
        raise ModuleNotFoundError("Shards need LitData: pip install 'lit-finetune[streaming]' (or pip install litdata boto3).") from err
    return litdata


def file_bytes(path: str) -> bytes:
    """The bytes of a file, as stored."""
    with open(path, "rb") as f:
        return f.read()


def path_bytes(path: str) -> bytes:
    """A source path as UTF-8 bytes: LitData would store a ``str`` naming an existing image file as that image."""
    return str(path).encode("utf-8")


def mask_png(target: np.ndarray) -> bytes:
    """Class indices ``(H, W)`` as a lossless PNG: 8-bit when every value is below 256, else 16-bit."""
    mode, dtype = ("L", np.uint8) if target.max(initial=0) < 256 else ("I;16", np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(target.astype(dtype), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


class ClassificationRecords:
    """Shard samples of an :class:`~lit_finetune.data.folder.ImageDataset`: image bytes, target, index, path.

    Args:
        dataset: the split's dataset (only its ``samples`` are read; no transform is applied).
    """

    kind = "classification"

    def __init__(self, dataset: ImageDataset) -> None:
        self.samples = dataset.samples

    def __len__(self) -> int:
        return len(self.samples)

    def __call__(self, index: int) -> dict[str, Any]:
        path, target = self.samples[index]
        stored: Any = int(target) if isinstance(target, int) else np.asarray(target, dtype=np.float32)
        return {"image": file_bytes(path), "target": stored, "index": int(index), "path": path_bytes(path)}


class SegmentationRecords:
    """Shard samples of a :class:`~lit_finetune.data.segmentation.SegmentationDataset`: image bytes, mask PNG, index, path.

    The mask is stored as the training target (class indices, ``ignore_index`` kept, binary masks mapped to 0/1).

    Args:
        dataset: the split's dataset (its pairs and the task's mask rule).
    """

    kind = "segmentation"

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.pairs = dataset.pairs
        self.masks = dataset.masks

    def __len__(self) -> int:
        return len(self.pairs)

    def __call__(self, index: int) -> dict[str, Any]:
        path, mask_path = self.pairs[index]
        if mask_path is None:
            raise ValueError(f"'{path}' has no mask: only image/mask pairs can be written as segmentation shards.")
        target = self.masks.to_target(read_mask(mask_path))
        return {"image": file_bytes(path), "mask": mask_png(target), "index": int(index), "path": path_bytes(path)}


RECORDS: dict[type, Callable[[Any], ClassificationRecords | SegmentationRecords]] = {
    ImageDataset: ClassificationRecords,
    SegmentationDataset: SegmentationRecords,
}
"""How each kind of dataset becomes shard samples (keyed by the dataset class the data module builds)."""


def records_of(dataset: Dataset) -> ClassificationRecords | SegmentationRecords:
    """The record writer of ``dataset``'s class (or of its nearest registered base class).

    Raises:
        ValueError: the data module builds a dataset class without a record writer.
    """
    for cls in type(dataset).__mro__:
        if cls in RECORDS:
            return RECORDS[cls](dataset)
    raise ValueError(f"`optimize` cannot write {type(dataset).__name__} samples; it writes {', '.join(c.__name__ for c in RECORDS)}.")


def describe(datamodule: Any, kind: str, sizes: dict[str, int]) -> dict[str, Any]:
    """The metadata of an output: what the streaming data modules and the model need before reading a sample."""
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "task": getattr(datamodule, "task", None),
        "class_names": list(datamodule.class_names),
        "class_counts": datamodule.class_counts,
        "num_train_samples": sizes.get("train", 0),
        "splits": sizes,
    }
    for name in ("palette", "ignore_index", "positive_value"):  # segmentation data modules have them
        value = getattr(datamodule, name, None)
        if value is not None:
            meta[name] = [list(c) for c in value] if name == "palette" else value
    return meta


def check_output(output: str, overwrite: bool, storage_options: dict[str, Any] | None) -> None:
    """Refuse to write into an output that holds data, unless ``overwrite``.

    Raises:
        ValueError: the output holds a finished optimize output or other files.
    """
    if overwrite:
        return
    if storage.exists(storage.join(output, METADATA_FILE), storage_options):
        raise ValueError(f"'{output}' already holds optimized shards ({METADATA_FILE}); pass --overwrite to replace them.")
    if not storage.is_empty(output, storage_options):
        raise ValueError(f"'{output}' is not empty; choose a new output, or pass --overwrite to replace what it holds.")


def optimize_datamodule(
    datamodule: Any,
    output: str,
    num_workers: int = 2,
    chunk_bytes: str = "64MB",
    overwrite: bool = False,
    splits: Sequence[str] = SPLITS,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the splits of a data module (``ImageFolderDataModule``, ``SegmentationDataModule``, ...) as shards.

    Args:
        datamodule: the data module, built from a config as for training.
        output: a local folder or an object-storage URL (``s3://bucket/prefix``).
        num_workers: processes that read and write samples in parallel.
        chunk_bytes: size of each chunk file (LitData's ``chunk_bytes``: ``"64MB"``).
        overwrite: replace an output that holds data.
        splits: the splits to write (those the data set has).
        storage_options: LitData/boto3 options of the object store (``endpoint_url``, credentials).

    Returns:
        The metadata written to ``<output>/lit_finetune.json``.

    Raises:
        ValueError: a bad option, an output in use (without ``overwrite``), or the data module's checks failing.
    """
    optimize = require_litdata().optimize
    if num_workers < 1:
        raise ValueError(f"`--workers` must be >= 1, got {num_workers}.")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; choose among {', '.join(SPLITS)}.")
    storage.allow_plain_http(storage_options)
    check_output(output, overwrite, storage_options)
    datamodule._check_files()  # unreadable images reported and skipped (or an error); masks checked
    items = dict(zip(SPLITS, datamodule._splits()))
    sizes, kind = {}, None
    for split in splits:
        if not items[split]:
            continue
        records = records_of(datamodule._dataset(items[split], None))
        kind = records.kind
        start = time.perf_counter()
        optimize(
            fn=records,
            inputs=list(range(len(records))),
            output_dir=storage.join(output, split),
            num_workers=min(num_workers, len(records)),
            chunk_bytes=chunk_bytes,
            mode="overwrite" if overwrite else None,
            # fork: workers start in a second instead of re-importing torch (spawn); nothing here uses CUDA.
            start_method="fork" if sys.platform.startswith("linux") else None,
            storage_options=dict(storage_options or {}),
            reorder_files=False,
        )
        sizes[split] = len(records)
        log.info("%s: %d samples in %.1f s", split, len(records), time.perf_counter() - start)
    if kind is None:
        raise ValueError(f"No samples to write in splits {list(splits)}.")
    meta = describe(datamodule, kind, sizes)
    storage.write_json(storage.join(output, METADATA_FILE), meta, storage_options)
    return meta


def read_metadata(input_dir: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of an optimized output.

    Raises:
        FileNotFoundError: ``input_dir`` holds no ``lit_finetune.json`` (not written by ``lit-finetune optimize``,
            or an unfinished run).
    """
    location = storage.join(input_dir, METADATA_FILE)
    storage.allow_plain_http(storage_options)
    try:
        meta = storage.read_json(location, storage_options)
    except (FileNotFoundError, OSError) as err:
        raise FileNotFoundError(
            f"No shards at '{input_dir}' ({METADATA_FILE} missing): write them with `lit-finetune optimize --output {input_dir}`."
        ) from err
    except Exception as err:  # botocore's ClientError (404, access denied) and the like
        raise FileNotFoundError(
            f"Cannot read '{location}': {err}. Check the URL, the endpoint and the credentials (docs/scaling.md)."
        ) from err
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"'{location}' has format {meta.get('format')}; this version reads format {FORMAT_VERSION}: re-run `lit-finetune optimize`."
        )
    return meta


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-finetune optimize",
        description="Write the data set of a config (its `data` section, with the model's task) as LitData shards, one output per split. "
        "Every other option (--config, --data.root, --model.task, ...) is read as by `lit-finetune fit`.",
    )
    p.add_argument(
        "--output",
        required=True,
        help="a local folder or an object-storage URL (s3://bucket/prefix; endpoint and credentials from AWS_* variables)",
    )
    p.add_argument("--workers", type=int, default=2, help="parallel processes that write samples (default 2)")
    p.add_argument("--chunk_bytes", default="64MB", help="size of each chunk file (default 64MB)")
    p.add_argument("--splits", default="train,val,test", help="splits to write, comma-separated (those present; default train,val,test)")
    p.add_argument("--overwrite", action="store_true", help="replace an output that already holds data")
    return p


def main(argv: list[str]) -> int:
    """``lit-finetune optimize``: build the data module of a config and write its splits as shards."""
    from lit_finetune.cli import build_cli

    args, rest = parser().parse_known_args(argv)
    if not rest:
        parser().error("give the data set as for `fit`: --config configs/x.yaml (and any --data.* option)")
    check_output(args.output, args.overwrite, None)  # before the data module scans and checks the files
    argv0, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads `rest`, not the `optimize` command line
    try:
        cli = build_cli(rest, run=False)
    finally:
        sys.argv = argv0
    meta = optimize_datamodule(
        cli.datamodule, args.output, args.workers, args.chunk_bytes, args.overwrite, [s for s in args.splits.split(",") if s]
    )
    counts = ", ".join(f"{split} {n}" for split, n in meta["splits"].items())
    print(f"Wrote {counts} samples ({meta['kind']}, task {meta['task']}, {len(meta['class_names'])} classes) to {args.output}")
    return 0

"""``lit-finetune optimize``: build the data module of a config as ``fit`` does and write its splits as LitData shards."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from lit_finetune.data.shards import check_output, optimize_datamodule


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


def main(argv: list[str], build_cli: Callable[..., Any]) -> int:
    """``lit-finetune optimize``: build the data module of a config with ``build_cli`` (the command line's own,
    so the options read as for ``fit``) and write its splits as shards."""
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

"""Training recipes on real photographs: the default recipe against the small-data overlay and references.

Data: the 1,399 cat/dog photographs of ``../shared/data/cats_dogs`` (relative to the repository root; or
``--data`` / ``LIT_FINETUNE_CATS_DOGS``). A fixed stratified subset (``--per-class`` images a class, chosen
with ``--split-seed``) trains; every other photograph is held out and scored once, after the last epoch.
The photographs are shrunk once (shorter side twice the image size) into a temporary folder (or ``--cache``)
with a labels CSV of the split; the originals are only read.

Every arm is a ``lit-finetune fit`` command line (the same CLI users run, in this process: config files
stacked with ``--config`` and a few options), resnet18 from random weights. Arms:

- ``default``: ``configs/quickstart.yaml`` pointed at the photographs, with the data module's default
  augmentation for photographs (``RandomResizedCrop`` scale 0.08-1, flips): AdamW lr 0.003, weight decay
  0.01, cosine over the epochs.
- ``small_data``: the same plus ``--config configs/recipes/small_data.yaml``.
- ``seed``: ``configs/hymenoptera_scratch.yaml`` (the seed tutorial's recipe: SGD lr 0.001, momentum 0.9,
  StepLR 7 epochs) pointed at the photographs.
- ``timm``: timm's ``train.py`` defaults restated for this CLI (``benchmarks/configs/timm_default.yaml``):
  SGD (Nesterov, momentum 0.9) at lr ``0.1 * batch / 256``, weight decay 2e-5 (none on norms and
  biases), 5 warm-up epochs from 1e-5, cosine per epoch, label smoothing 0.1, ``ColorJitter(0.4)`` after
  ``RandomResizedCrop`` and the flip; no MixUp, CutMix, EMA or random erasing.
- variants (``--arms``): the overlay with one lever changed, defined in ``VARIANTS``.

All arms share the image size, batch size, epochs, the split, the held-out set and the seeds; the rounds
alternate the arms (seed 0: every arm, then seed 1, ...), so machine load hits them alike. Printed per arm:
the median held-out accuracy, its spread (min-max) over seeds, the median seconds of a run (training plus
the one held-out scoring), then ``overlay_gain: X`` (median accuracy of ``small_data`` minus ``default``).

Protocols: ``--protocol cpu`` (default: 32 px images, batch 16, 20 epochs = 300 optimizer steps) and
``--protocol seed`` (the seed tutorial's: 224 px, batch 16, 25 epochs; about 50x the compute).

    python benchmarks/recipes_real.py                            # 3 seeds, default / small_data / timm
    python benchmarks/recipes_real.py --arms default,small_data,seed,timm --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
import yaml
from PIL import Image

from lit_finetune.cli import build_cli

DATA_ENV = "LIT_FINETUNE_CATS_DOGS"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cats_dogs"
PROTOCOLS = {
    "cpu": {"image_size": 32, "batch_size": 16, "epochs": 20},
    "seed": {"image_size": 224, "batch_size": 16, "epochs": 25},
}
QUICKSTART = "configs/quickstart.yaml"
OVERLAY = "configs/recipes/small_data.yaml"
# Each arm: config files stacked in order, then extra options ("{epochs}" is filled in).
ARMS: dict[str, tuple[list[str], list[str]]] = {
    "default": ([QUICKSTART], ["--model.lr_scheduler.init_args.T_max", "{epochs}"]),
    "small_data": ([QUICKSTART, OVERLAY], []),
    "seed": (["configs/hymenoptera_scratch.yaml"], []),
    "timm": (
        [QUICKSTART, "benchmarks/configs/timm_default.yaml"],
        [
            "--model.optimizer.init_args.lr",
            "{timm_lr}",
            "--model.lr_scheduler.init_args.warmup_start_factor",
            "{timm_warmup_factor}",
            "--data.train_transform",
            "{timm_transform}",
        ],
    ),
}
# Levers tried on top of the overlay: name -> extra options.
VARIANTS: dict[str, list[str]] = {
    "sd_nomix": ["--data.mixup_alpha", "0", "--data.cutmix_alpha", "0"],
    "sd_nomix_crop": ["--data.mixup_alpha", "0", "--data.cutmix_alpha", "0", "--data.crop_scale", "[0.25, 1.0]"],
    "sd_nomix_crop_basic": [
        "--data.mixup_alpha",
        "0",
        "--data.cutmix_alpha",
        "0",
        "--data.crop_scale",
        "[0.25, 1.0]",
        "--data.augment",
        "basic",
    ],
}


def data_root(cli_value: str | None) -> Path | None:
    """The photographs' folder: ``--data``, else ``$LIT_FINETUNE_CATS_DOGS``, else ``<repo>/../shared/data/cats_dogs``."""
    root = Path(cli_value or os.environ.get(DATA_ENV) or DEFAULT_DATA)
    return root if (root / "cat").is_dir() and (root / "dog").is_dir() else None


def write_split(root: Path, per_class: int, seed: int, short_side: int, out: Path) -> tuple[int, int]:
    """Write the photographs, shrunk to ``short_side`` px, under ``out`` with ``out/split.csv`` (image, labels, split):
    ``per_class`` seeded images of each class ``train``, the rest ``val``.

    Shrinking once (with PIL's JPEG draft mode) saves decoding the full-size JPEGs every epoch, which on a
    2-core machine costs more than the network at 64 px; every arm reads the same shrunk files.
    """
    rows, n_train = [], 0
    for name in ("cat", "dog"):
        files = sorted(p.name for p in (root / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        chosen = set(random.Random(f"{seed}-{name}").sample(files, per_class))
        (out / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            shrink(root / name / file, out / name / file, short_side)
        rows += [(f"{name}/{f}", name, "train" if f in chosen else "val") for f in files]
        n_train += per_class
    with (out / "split.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "labels", "split"])
        writer.writerows(rows)
    return n_train, len(rows) - n_train


def count_split(labels: Path) -> tuple[int, int]:
    """Training and held-out rows of a split CSV."""
    with labels.open() as fh:
        splits = [row["split"] for row in csv.DictReader(fh)]
    return splits.count("train"), splits.count("val")


def shrink(src: Path, dst: Path, short_side: int) -> None:
    """Save ``src`` as a JPEG whose shorter side is ``short_side`` (never enlarged)."""
    with Image.open(src) as image:
        image.draft("RGB", (short_side, short_side))
        image = image.convert("RGB")
        scale = short_side / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        image.save(dst, quality=95)


def photos_config(photos: Path, protocol: dict, workers: int, out: Path) -> Path:
    """The data section every arm shares, stacked right after its base config (overlays come after it)."""
    size = protocol["image_size"]
    data = {
        "root": str(photos), "labels_csv": str(photos / "split.csv"), "split_column": "split", "demo": None,
        "check_images": False,  # the data set's README: all files decode
        "image_size": size, "resize_size": round(size / 0.875), "batch_size": protocol["batch_size"], "num_workers": workers,
        # The data module's defaults for photographs (the base configs set them for digits or leave them out).
        "crop_scale": [0.08, 1.0], "hflip": True, "train_augment": True,
    }  # fmt: skip
    out.write_text(yaml.safe_dump({"data": data}))
    return out


def arm_args(name: str, data_config: Path, work: Path, protocol: dict, seed: int) -> list[str]:
    """The ``fit`` command line of one arm and seed."""
    configs, extra = ([QUICKSTART, OVERLAY], VARIANTS[name]) if name in VARIANTS else ARMS[name]
    epochs = protocol["epochs"]
    args = ["fit", "--config", str(REPO / configs[0]), "--config", str(data_config)]
    for config in configs[1:]:
        args += ["--config", str(REPO / config)]
    args += [
        "--seed_everything", str(seed),
        "--trainer.max_epochs", str(epochs),
        "--trainer.check_val_every_n_epoch", str(epochs),  # score the held-out photographs once, at the end
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(work),
        "--trainer.logger.init_args.name", name,
    ]  # fmt: skip
    timm_lr = 0.1 * protocol["batch_size"] / 256  # timm's --lr-base 0.1 at --lr-base-size 256, linear scaling for SGD
    fill = {
        "epochs": epochs,
        "timm_lr": timm_lr,
        "timm_warmup_factor": 1e-5 / timm_lr,
        "timm_transform": timm_train_transform(protocol["image_size"]),
    }
    return args + [value.format(**fill) for value in extra]


def timm_train_transform(size: int) -> str:
    """timm's default training pipeline at ``size`` as a transforms v2 ``Compose`` for ``--data.train_transform``."""
    steps = [
        ("RandomResizedCrop", {"size": size, "scale": [0.08, 1.0], "antialias": True}),
        ("RandomHorizontalFlip", {}),
        ("ColorJitter", {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4}),
        ("ToImage", {}),
        ("ToDtype", {"dtype": "torch.float32", "scale": True}),
        ("Normalize", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    ]
    transforms = [{"class_path": f"torchvision.transforms.v2.{name}", "init_args": init} for name, init in steps]
    return json.dumps({"class_path": "torchvision.transforms.v2.Compose", "init_args": {"transforms": transforms}})


def run_arm(args: list[str]) -> tuple[float, float]:
    """Fit one arm; its held-out accuracy (``val/acc`` after the last epoch) and wall seconds."""
    start = time.perf_counter()
    cli = build_cli(args)
    seconds = time.perf_counter() - start
    return float(cli.trainer.callback_metrics["val/acc"]), seconds


def run_seeds(arms: list[str], seeds: list[int], data_config: Path, work: Path, protocol: dict) -> dict[str, list]:
    """Every arm for each seed in turn (arms alternate); per arm a list of (accuracy, seconds)."""
    results: dict[str, list] = {a: [] for a in arms}
    try:
        for seed in seeds:
            for name in arms:
                acc, seconds = run_arm(arm_args(name, data_config, work, protocol, seed))
                results[name].append((acc, seconds))
                print(f"  seed {seed} {name}: acc {acc:.4f} in {seconds:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
                shutil.rmtree(work / name, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def run_seeds_in_parallel(argv: list[str], seeds: list[int], arms: list[str], jobs: int, photos: Path) -> dict[str, list]:
    """One process per seed (at most ``jobs`` at once), each running every arm in turn on the shrunk ``photos``."""
    base = ["--cache", str(photos)] + [
        a
        for i, a in enumerate(argv)
        if a not in ("--seeds", "--jobs", "--json", "--cache") and (i == 0 or argv[i - 1] not in ("--seeds", "--jobs", "--json", "--cache"))
    ]
    outputs = [Path(tempfile.mkstemp(prefix=f"recipes_real_seed{seed}_", suffix=".json")[1]) for seed in seeds]
    pending = list(zip(seeds, outputs, strict=False))
    running: list[tuple[subprocess.Popen, Path]] = []
    while pending or running:
        while pending and len(running) < jobs:
            seed, out = pending.pop(0)
            command = [sys.executable, __file__, *base, "--seeds", str(seed), "--jobs", "1", "--json", str(out)]
            log = out.with_suffix(".log")
            with log.open("w") as fh:  # a file, not a pipe: a full pipe would stall the process
                running.append((subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT), log))
        process, log = running.pop(0)
        if process.wait() != 0:
            raise RuntimeError(f"a seed's process failed ({process.args}); its output: {log}")
        print("".join(line for line in log.read_text().splitlines(keepends=True) if line.startswith("  seed ")), end="", flush=True)
        log.unlink()
    results: dict[str, list] = {a: [] for a in arms}
    for out in outputs:
        for name, runs in json.loads(out.read_text()).items():
            results[name] += [tuple(run) for run in runs]
        out.unlink()
    return results


def summarize(results: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Print one line per arm; return the median accuracy of each."""
    medians = {}
    print(f"{'arm':<22}{'median acc':>11}{'min':>8}{'max':>8}{'median s':>10}  per seed")
    for name, runs in results.items():
        accs = [acc for acc, _ in runs]
        medians[name] = statistics.median(accs)
        per_seed = " ".join(f"{acc:.3f}" for acc in accs)
        print(
            f"{name:<22}{medians[name]:>11.3f}{min(accs):>8.3f}{max(accs):>8.3f}{statistics.median(s for _, s in runs):>10.1f}  {per_seed}"
        )
    return medians


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help=f"the cats_dogs folder (default: ${DATA_ENV} or {DEFAULT_DATA})")
    parser.add_argument("--arms", default="default,small_data,timm", help=f"comma-separated, from {sorted(ARMS) + sorted(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (the split does not change)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs (all arms)")
    parser.add_argument("--image-size", type=int, default=None, help="override the protocol's image size (all arms)")
    parser.add_argument("--per-class", type=int, default=120, help="training images per class")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the training subset")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes at once (each alternates the arms)")
    parser.add_argument(
        "--cache", default=None, help="keep the shrunk photographs and split here and reuse them (same --per-class, --split-seed, size)"
    )
    parser.add_argument("--json", default=None, help="also write the per-arm results to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (more spin against each other on a loaded CPU)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    root = data_root(opts.data)
    if root is None:
        print(f"SKIP: no cat/ and dog/ folders at {opts.data or os.environ.get(DATA_ENV) or DEFAULT_DATA} (pass --data or set {DATA_ENV}).")
        return 0
    arms = opts.arms.split(",")
    unknown = [a for a in arms if a not in ARMS and a not in VARIANTS]
    if unknown:
        print(f"error: unknown arms {unknown}; choose from {sorted(ARMS) + sorted(VARIANTS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(opts.threads)
    overrides = {"epochs": opts.epochs, "image_size": opts.image_size}
    protocol = dict(PROTOCOLS[opts.protocol], **{key: value for key, value in overrides.items() if value})
    seeds = [int(s) for s in opts.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="recipes_real_"))
    photos = Path(opts.cache) if opts.cache else work / "photos"
    if not (photos / "split.csv").is_file():
        write_split(root, opts.per_class, opts.split_seed, 2 * protocol["image_size"], photos)
    n_train, n_held = count_split(photos / "split.csv")
    data_config = photos_config(photos, protocol, opts.workers, work / "photos.yaml")
    print(f"command: python benchmarks/recipes_real.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"data: {root} ({n_train} training photographs, split seed {opts.split_seed}; {n_held} held out)")
    print(f"protocol: {opts.protocol}: {protocol}, resnet18 from random weights; seeds {seeds}; load: {os.getloadavg()}")
    if opts.jobs > 1 and len(seeds) > 1:
        try:
            results = run_seeds_in_parallel(argv if argv is not None else sys.argv[1:], seeds, arms, opts.jobs, photos)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        results = run_seeds(arms, seeds, data_config, work, protocol)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results))
    print(f"load after: {os.getloadavg()}")
    medians = summarize(results)
    if "default" in medians and "small_data" in medians:
        seconds = {name: statistics.median(s for _, s in results[name]) for name in ("default", "small_data")}
        print(f"time_ratio: {seconds['small_data'] / seconds['default']:.3f} (small_data / default, median seconds)")
        print(f"overlay_gain: {medians['small_data'] - medians['default']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

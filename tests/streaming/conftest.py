"""Fixtures of the streaming tests: tiny data written as shards, and an S3 server on localhost (moto)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_finetune.data.datamodule import ImageFolderDataModule
from lit_finetune.data.shards import optimize_datamodule

HERE = Path(__file__).parent


def write_classes(root: Path, per_class: int, seed: int, size: int = 32) -> None:
    """``per_class`` PNGs of each class under ``root/<class>``: red ``cat``s, green ``dog``s, with noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3))
            pixels[..., c] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}_{i:03d}.png")


def write_folder(root: Path, train: int = 12, val: int = 4) -> Path:
    """``root/train`` and ``root/val`` class folders of 32 px PNGs."""
    write_classes(root / "train", train, seed=0)
    write_classes(root / "val", val, seed=1)
    return root


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "data")


@pytest.fixture(scope="module")
def class_shards(class_folder: Path, tmp_path_factory) -> Path:
    """The class folders written as shards (24 train, 8 val samples; 2 small chunks per split)."""
    output = tmp_path_factory.mktemp("shards") / "digits"
    optimize_datamodule(ImageFolderDataModule(str(class_folder), num_workers=0), str(output), num_workers=2, chunk_bytes="16KB")
    return output


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3 server (moto's) on 127.0.0.1 with an empty bucket ``shards``; ``AWS_*`` variables point at it.

    Yields the bucket's URL, ``s3://shards``. Nothing leaves this machine.
    """
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket="shards")
        yield "s3://shards"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
